"""HAWQ-V3 Hessian traces for one batch (docs/methods.md, "HAWQ-V3"), on the float model.

Per decided layer l: t_l = Hutchinson estimate of tr(H_ll), the diagonal Hessian block of the
batch-mean loss, from Rademacher probes v: E[vᵀ H_ll v] = tr(H_ll). Hessian-vector products come
from PyHessian (`pyhessian.utils.hessian_vector_product`). At most `max_iter` probes; stop when
the running mean changes by less than `tol` relative to its magnitude. PyHessian's own test,
`abs(mean - trace) / (trace + 1e-6)`, is true whenever the running mean is negative, so the
denominator here is the absolute value.

Estimators:
  - per-layer: probes on one layer at a time (L separate Hutchinson runs);
  - all-layers: one probe over all decided weights and one Hessian-vector product per probe;
    v_lᵀ (Hv)_l has expectation tr(H_ll) because cross-block terms vanish in expectation, but
    they do not vanish per probe: they add Σ_{m≠l} ‖H_lm‖²_F to each layer's variance.
per-layer is the default: measured on the embedded model and on resnet18, all-layers is ~4x
faster at a fixed probe count, but at equal time its traces are noisier on 75-95 % of the
layers, and with the default stopping rule it is only ~1.3x faster and 4-5x noisier across
probe seeds (docs/performance.md).

The cache keeps the traces and ‖Q_b(W_l) − W_l‖²; the sensitivity s(l,b) = t_l / numel(W_l) · ‖ΔW‖²
is derived from them by `clado_cli.methods.hawq.hawq_sensitivity`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..quant.model import QuantModel
from .losses import make_loss


def quant_error_sq(qm: QuantModel) -> np.ndarray:
    out = np.zeros((len(qm.decided), len(qm.candidates)))
    for l, q in enumerate(qm.decided):
        w = q.layer.weight.detach()
        for k, b in enumerate(qm.candidates):
            out[l, k] = float(((q.quantized_weight(b) - w).double() ** 2).sum())
    return out


def _rademacher(shape, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen).float() * 2 - 1).to(device)


def _converged(prev: float, cur: float, tol: float) -> bool:
    return abs(cur - prev) / (abs(prev) + 1e-6) < tol


def hawq_traces(model: torch.nn.Module, qm: QuantModel, x: torch.Tensor, y: torch.Tensor,
                loss_kind: str = "ce", max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                estimator: str = "per-layer", tick: Optional[Callable[[int], None]] = None,
                return_samples: bool = False, layers: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Per-layer Hutchinson traces. `return_samples`: also return every probe's value
    (`samples`, L × max_iter, NaN where a layer had stopped) to study the estimators.
    `layers` (per-layer estimator): probe only these decided layers, the others' traces stay 0
    (the dry run's timing probe)."""
    from pyhessian.utils import hessian_vector_product

    names = [q.name for q in qm.decided]
    params = [model.get_submodule(n).weight for n in names]
    with torch.no_grad():
        float_logits = model(x) if loss_kind == "kl" else None
    loss = make_loss(loss_kind, y, float_logits)(model(x))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(int(seed))
    L = len(names)
    traces = np.zeros(L)
    iters = np.zeros(L, dtype=np.int64)
    samples = np.full((L, max_iter), np.nan)
    if estimator == "per-layer":
        for l in (range(L) if layers is None else layers):
            vals: List[float] = []
            for it in range(max_iter):
                v = _rademacher(params[l].shape, gen, params[l].device)
                hv = hessian_vector_product([grads[l]], [params[l]], [v])
                vals.append(float((hv[0] * v).sum()))
                samples[l, it] = vals[-1]
                if it > 0 and _converged(np.mean(vals[:-1]), np.mean(vals), tol):
                    break
            traces[l], iters[l] = np.mean(vals), len(vals)
            if tick:
                tick(1)
    elif estimator == "all-layers":
        sums = np.zeros(L)
        done = np.zeros(L, dtype=bool)
        for it in range(max_iter):
            vs = [_rademacher(p.shape, gen, p.device) for p in params]
            hv = hessian_vector_product(list(grads), params, vs)
            vals = np.array([float((h * v).sum()) for h, v in zip(hv, vs)])
            samples[~done, it] = vals[~done]
            prev = sums / np.maximum(iters, 1)
            # a converged layer keeps its estimate; the others take this probe
            sums[~done] += vals[~done]
            iters[~done] += 1
            cur = sums / np.maximum(iters, 1)
            if it > 0:
                done |= np.array([_converged(p, c, tol) for p, c in zip(prev, cur)])
            if done.all():
                break
        traces = sums / np.maximum(iters, 1)
        if tick:
            tick(L)
    else:
        raise ValueError(f"unknown HAWQ estimator {estimator!r}")
    out = {"traces": traces, "iterations": iters, "qerr_sq": quant_error_sq(qm),
           "numel": np.array([p.numel() for p in params], dtype=np.int64)}
    if return_samples:
        out["samples"] = samples
    return out

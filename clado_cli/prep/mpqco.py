"""MPQCO sensitivities for one batch (SPEC, MPQCO), on the float model:

    z_n = logit of the true class,  g_n = ∂z_n/∂W (per sample),  ΔW(l,b) = Q_b(W_l) − W_l,
    s(l,b) = 1/(2N) · Σ_n ( ⟨g_n[l], ΔW(l,b)⟩ / z_n )².

`mpqco_reference` loops over samples one at a time (batch size 1, autograd); `mpqco_fast`
computes every per-sample gradient in one vectorized pass (torch.func.vmap over grad).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..quant.model import QuantModel


def weight_deltas(qm: QuantModel) -> Dict[str, torch.Tensor]:
    """ΔW per decided layer, stacked over candidates: (B, *W.shape)."""
    out = {}
    for q in qm.decided:
        w = q.layer.weight.detach()
        out[q.name] = torch.stack([q.quantized_weight(b) - w for b in qm.candidates])
    return out


def _decided_params(model: torch.nn.Module, names: List[str]) -> Dict[str, torch.nn.Parameter]:
    return {f"{n}.weight": model.get_submodule(n).weight for n in names}


def mpqco_reference(model: torch.nn.Module, qm: QuantModel, x: torch.Tensor, y: torch.Tensor,
                    tick: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    names = [q.name for q in qm.decided]
    params = _decided_params(model, names)
    deltas = weight_deltas(qm)
    N = x.shape[0]
    s = np.zeros((len(names), len(qm.candidates)), dtype=np.float64)
    for n in range(N):
        z = model(x[n:n + 1])[0, y[n]]
        grads = torch.autograd.grad(z, list(params.values()))
        zf = float(z.detach())
        for l, (name, g) in enumerate(zip(names, grads)):
            dots = (deltas[name].flatten(1) @ g.flatten()).double().cpu().numpy()
            s[l] += (dots / zf) ** 2
        if tick:
            tick(1)
    return {"s": s / (2 * N)}


def mpqco_fast(model: torch.nn.Module, qm: QuantModel, x: torch.Tensor, y: torch.Tensor,
               tick: Optional[Callable[[int], None]] = None, max_chunk_bytes: float = 1e9) -> Dict[str, np.ndarray]:
    from torch.func import functional_call, grad_and_value, vmap

    names = [q.name for q in qm.decided]
    params = {k: v.detach() for k, v in _decided_params(model, names).items()}
    others = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    buffers = dict(model.named_buffers())
    deltas = weight_deltas(qm)

    def true_logit(p, xn, yn):
        out = functional_call(model, {**others, **buffers, **p}, (xn.unsqueeze(0),))
        return out[0].gather(0, yn.reshape(1)).squeeze(0)

    numel = sum(p.numel() for p in params.values())
    chunk = max(1, int(max_chunk_bytes // (4 * numel)))
    grads, z = vmap(grad_and_value(true_logit), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)
    N = x.shape[0]
    s = np.zeros((len(names), len(qm.candidates)), dtype=np.float64)
    zf = z.detach().double()
    for l, name in enumerate(names):
        g = grads[f"{name}.weight"].flatten(1)                      # (N, numel)
        dots = (g @ deltas[name].flatten(1).T).double()             # (N, B)
        s[l] = ((dots / zf[:, None]) ** 2).sum(0).cpu().numpy()
    if tick:
        tick(N)
    return {"s": s / (2 * N)}

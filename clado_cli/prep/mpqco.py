"""MPQCO sensitivities for one batch (docs/methods.md, "MPQCO"), on the float model:

    z_n = logit of the true class,  g_n = ∂z_n/∂W (per sample),  ΔW(l,b) = Q_b(W_l) − W_l,
    s(l,b) = 1/(2N) · Σ_n ( ⟨g_n[l], ΔW(l,b)⟩ / z_n )².

`mpqco_reference` loops over samples one at a time (batch size 1, autograd). `mpqco_fast` gets
every ⟨g_n[l], ΔW(l,b)⟩ for the whole batch from one forward and one backward pass:

  - `method="linear"` (used whenever every decided layer is a stock Conv/Linear, i.e. its
    output is linear in its weight): with x the layer's input and o its output,
    ⟨∂z_n/∂W, ΔW⟩ = ⟨∂z_n/∂o_n, conv(x_n, ΔW)⟩ (the directional derivative of z_n along ΔW).
    One backward pass of Σ_n z_n gives every ∂z_n/∂o_n at once (sample n's logit depends on
    sample n only, the model being in eval mode), and one extra bias-free layer call per
    option gives conv(x, ΔW) for the whole batch. No per-sample gradient is ever stored, so the
    memory is that of one training step, not N copies of the weights. A layer called several
    times sums its calls.
  - `method="vmap"`: per-sample gradients with torch.func (vmap over grad of the true logit),
    chunked to `max_chunk_bytes` of gradients; works for any layer.
`method="auto"` picks "linear" when it applies, else "vmap".

With options that differ in activation width (`quant.options`), option k = (w, a) adds the
first-order change of z_n from quantizing the layer's input x at a bits,
⟨∂z_n/∂x_n, Q_a(x_n) − x_n⟩, to the weight term inside the square (docs/methods.md, "MPQCO"):
from the same backward pass in "linear" (the inputs join the gradient's targets), per sample in
the reference; "vmap" refuses them.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import UsageError
from ..quant.model import QuantModel, fake_quant_activation

_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_deltas(qm: QuantModel) -> Dict[str, torch.Tensor]:
    """ΔW per decided layer, stacked over candidates: (B, *W.shape)."""
    out = {}
    for q in qm.decided:
        w = q.layer.weight.detach()
        out[q.name] = torch.stack([q.quantized_weight(b) - w for b in qm.candidates])
    return out


def _input_hooks(model: torch.nn.Module, names: List[str], calls: List[List[torch.Tensor]]):
    """Forward pre-hooks recording each call's input of the named layers, made to require grad
    (an input that did not has no upstream graph to cut); returns the handles."""
    handles = []
    for l, name in enumerate(names):
        def hook(mod, inp, l=l):
            x = inp[0]
            if not x.requires_grad:
                x = x.detach().requires_grad_()
            calls[l].append(x)
            return (x,) + tuple(inp[1:])
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    return handles


@torch.no_grad()
def _act_dots(qm: QuantModel, names: List[str], inputs: List[List[torch.Tensor]],
              grads: List[List[Optional[torch.Tensor]]], N: int) -> torch.Tensor:
    """(L, B, N) float64: per option k = (w, a), ⟨∂z_n/∂x_n, Q_a(x_n) − x_n⟩ summed over a layer's
    calls (the same for every option with activation width a)."""
    out = torch.zeros(len(names), len(qm.pairs), N, dtype=torch.float64, device=inputs[0][0].device)
    for l, name in enumerate(names):
        q = qm.qlayers[name]
        for x, g in zip(inputs[l], grads[l]):
            if g is None:
                continue
            x = x.detach()
            per_width = {a: (fake_quant_activation(q.act_fq(a), x) - x).mul_(g).reshape(N, -1).sum(1)
                         for a in q.a_widths}
            for k, (_, a) in enumerate(qm.pairs):
                out[l, k] += per_width[a]
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
    with torch.enable_grad():
        for n in range(N):
            inputs: List[List[torch.Tensor]] = [[] for _ in names]
            handles = _input_hooks(model, names, inputs) if qm.act_options else []
            try:
                z = model(x[n:n + 1])[0, y[n]]
            finally:
                for h in handles:
                    h.remove()
            flat = [t for c in inputs for t in c]
            grads = torch.autograd.grad(z, list(params.values()) + flat, allow_unused=True)
            zf = float(z.detach())
            extra = None
            if qm.act_options:
                it = iter(grads[len(params):])
                extra = _act_dots(qm, names, inputs, [[next(it) for _ in c] for c in inputs], 1)[..., 0].cpu().numpy()
            for l, (name, g) in enumerate(zip(names, grads[:len(params)])):
                dots = (deltas[name].flatten(1) @ g.flatten()).double().cpu().numpy()
                if extra is not None:
                    dots = dots + extra[l]
                s[l] += (dots / zf) ** 2
            if tick:
                tick(1)
    return {"s": s / (2 * N)}


def _is_linear_in_weight(layer: nn.Module) -> bool:
    """A stock Conv/Linear (a subclass that keeps the stock forward counts too)."""
    for base in _LINEAR:
        if isinstance(layer, base):
            return type(layer).forward is base.forward
    return False


def _apply_delta(layer: nn.Module, x: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """The layer's output change along ΔW, bias-free: conv(x, ΔW) or x ΔWᵀ."""
    if isinstance(layer, nn.Linear):
        return torch.nn.functional.linear(x, dw)
    return layer._conv_forward(x, dw, None)


def _mpqco_linear(model, qm: QuantModel, x, y, deltas: Optional[Dict[str, torch.Tensor]] = None) -> np.ndarray:
    names = [q.name for q in qm.decided]
    layers = [model.get_submodule(n) for n in names]
    calls: List[List[tuple]] = [[] for _ in layers]
    handles = []
    inputs: List[List[torch.Tensor]] = [[] for _ in layers]
    if qm.act_options:
        handles += _input_hooks(model, names, inputs)
    for l, layer in enumerate(layers):
        def hook(mod, inp, out, l=l):
            if not out.requires_grad:
                out.requires_grad_()
            calls[l].append((inp[0].detach(), out))
        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            logits = model(x)
            z = logits.gather(1, y.reshape(-1, 1)).squeeze(1)
            outs = [o for c in calls for _, o in c]
            flat = [t for c in inputs for t in c]
            grads = torch.autograd.grad(z.sum(), outs + flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    act = None
    if qm.act_options:
        it = iter(grads[len(outs):])
        act = _act_dots(qm, names, inputs, [[next(it) for _ in c] for c in inputs], x.shape[0])
        grads = grads[:len(outs)]
    z = z.detach()
    N = x.shape[0]
    dots = torch.zeros(len(names), len(qm.candidates), N, dtype=torch.float64, device=x.device)
    g_iter = iter(grads)
    buf = None
    if deltas is None:
        # one buffer for every ΔW (a fresh allocation per option costs more than the subtraction)
        buf = torch.empty(max(q.layer.weight.numel() for q in qm.decided), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for l, (layer, q) in enumerate(zip(layers, qm.decided)):
            w = q.layer.weight.detach()
            for inp, _ in calls[l]:
                go = next(g_iter)
                if go is None:
                    continue
                for k, b in enumerate(qm.candidates):
                    if deltas is None:
                        dw = torch.sub(q.quantized_weight(b), w, out=buf[:w.numel()].view(w.shape))
                    else:
                        dw = deltas[q.name][k]
                    d = _apply_delta(layer, inp, dw)
                    # per-sample ⟨∂z_n/∂o_n, layer(x_n, ΔW)⟩ in fp32, as the reference's dot
                    dots[l, k] += d.mul_(go).reshape(N, -1).sum(1)
    if act is not None:
        dots += act
    return ((dots / z.double()) ** 2).sum(-1).cpu().numpy()


def _mpqco_vmap(model, names, deltas, x, y, max_chunk_bytes) -> np.ndarray:
    from torch.func import functional_call, grad_and_value, vmap

    params = {k: v.detach() for k, v in _decided_params(model, names).items()}
    others = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    buffers = dict(model.named_buffers())

    def true_logit(p, xn, yn):
        out = functional_call(model, {**others, **buffers, **p}, (xn.unsqueeze(0),))
        return out[0].gather(0, yn.reshape(1)).squeeze(0)

    numel = sum(p.numel() for p in params.values())
    chunk = max(1, int(max_chunk_bytes // (4 * numel)))
    grads, z = vmap(grad_and_value(true_logit), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)
    s = np.zeros((len(names), deltas[names[0]].shape[0]), dtype=np.float64)
    zf = z.detach().double()
    for l, name in enumerate(names):
        g = grads[f"{name}.weight"].flatten(1)                      # (N, numel)
        dots = (g @ deltas[name].flatten(1).T).double()             # (N, B)
        s[l] = ((dots / zf[:, None]) ** 2).sum(0).cpu().numpy()
    return s


def mpqco_fast(model: torch.nn.Module, qm: QuantModel, x: torch.Tensor, y: torch.Tensor,
               tick: Optional[Callable[[int], None]] = None, max_chunk_bytes: float = 1e9,
               method: str = "auto", deltas: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, np.ndarray]:
    """`deltas`: `weight_deltas(qm)`, computed once and passed to every batch of a run, saves
    recomputing the ΔW each call (at the cost of holding B copies of the decided weights)."""
    names = [q.name for q in qm.decided]
    if method == "auto":
        method = "linear" if all(_is_linear_in_weight(model.get_submodule(n)) for n in names) else "vmap"
    if method == "linear":
        s = _mpqco_linear(model, qm, x, y, deltas)
    elif method == "vmap":
        if qm.act_options:
            odd = next(n for n in names if not _is_linear_in_weight(model.get_submodule(n)))
            raise UsageError(f"MPQCO's fast engine cannot take activation options on layer {odd} (a "
                             f"{type(model.get_submodule(odd)).__name__} with its own forward): use --engine reference")
        s = _mpqco_vmap(model, names, deltas or weight_deltas(qm), x, y, max_chunk_bytes)
    else:
        raise ValueError(f"unknown MPQCO method {method!r}")
    N = x.shape[0]
    if tick:
        tick(N)
    return {"s": s / (2 * N)}

"""Per-layer compute: multiply-accumulates (MACs) of each quantizable layer at the model's real
input shape, counted from one forward pass (docs/methods.md, "Sizes and budgets"). A layer
called several times counts every call. BOPs of an option (l, w, a) = MACs_l · w · a."""
from __future__ import annotations

import math
from typing import Dict, Iterable

import torch
import torch.nn as nn

from .layers import QUANTIZABLE


def layer_macs(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> Dict[str, int]:
    """MACs per sample of each named Conv/Linear layer for the input `example` (batch of 1 or
    more; the count is per sample)."""
    wanted = set(names)
    macs: Dict[str, int] = {n: 0 for n in wanted}
    batch = example.shape[0]
    handles = []
    for name, mod in model.named_modules():
        if name not in wanted or not isinstance(mod, QUANTIZABLE):
            continue

        def hook(m, inp, out, name=name):
            if isinstance(m, nn.Linear):
                per_output = m.in_features
            else:
                per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
            macs[name] += int(out.numel() // batch) * int(per_output)

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return macs


def bops(macs: int, w_bits: int, a_bits: int) -> int:
    return int(macs) * int(w_bits) * int(a_bits)

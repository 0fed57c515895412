"""Per-layer costs at the model's real input shape, counted from one forward pass
(docs/methods.md, "Sizes and budgets"): multiply-accumulates (MACs) and input-activation
elements of each quantizable layer. A layer called several times counts every call. BOPs
follow from the MACs (decisions.bops_report), activation bytes from the elements
(OptionSpace.activation_bytes)."""
from __future__ import annotations

import math
from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn

from .layers import QUANTIZABLE, run_with_hooks


def layer_macs(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> Dict[str, int]:
    """MACs per sample of each named Conv/Linear layer for the input `example` (batch of 1 or
    more; the count is per sample)."""
    return layer_costs(model, example, names)[0]


def layer_costs(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """(MACs, input-activation elements) per sample of each named Conv/Linear layer, from one
    forward pass of `example` (batch of 1 or more; the counts are per sample)."""
    wanted = set(names)
    macs: Dict[str, int] = {n: 0 for n in wanted}
    elems: Dict[str, int] = {n: 0 for n in wanted}
    batch = example.shape[0]

    def counter(name):
        def hook(m, inp, out):
            elems[name] += int(inp[0].numel() // batch)
            if isinstance(m, nn.Linear):
                per_output = m.in_features
            else:
                per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
            macs[name] += int(out.numel() // batch) * int(per_output)
        return hook

    run_with_hooks(model, example, {n: counter(n) for n, m in model.named_modules()
                                    if n in wanted and isinstance(m, QUANTIZABLE)})
    return macs, elems

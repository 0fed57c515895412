"""The loss L(S) that every sensitivity measures (docs/methods.md, "Loss": batch-mean cross-entropy; or KL
divergence to the float model's output, which needs no labels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_loss(kind: str, y: torch.Tensor, float_logits: torch.Tensor | None = None):
    if kind == "ce":
        return lambda logits: F.cross_entropy(logits, y)
    if kind == "kl":
        if float_logits is None:
            raise ValueError("kl loss needs the float model's logits")
        target = F.log_softmax(float_logits.detach(), dim=1)
        return lambda logits: F.kl_div(F.log_softmax(logits, dim=1), target, log_target=True, reduction="batchmean")
    raise ValueError(f"unknown loss {kind!r}")

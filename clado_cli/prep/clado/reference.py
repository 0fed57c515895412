"""The reference engine: one full forward pass per measurement, weights fake-quantized on the
fly (docs/methods.md, "CLADO"). Needs no graph, so it runs every model."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..losses import make_loss


def measurement_count(n_layers: int, n_bits: int) -> int:
    """Forward passes per batch: L0, L·B singles, B²·L(L−1)/2 pairs."""
    return 1 + n_layers * n_bits + n_bits * n_bits * n_layers * (n_layers - 1) // 2


def row_set(rows: Optional[Sequence[int]], n_layers: int) -> set:
    """The decided layers whose rows to compute (all when `rows` is None)."""
    return set(range(n_layers)) if rows is None else {int(r) for r in rows}


@torch.no_grad()
def clado_reference(qm, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
                    tick: Optional[Callable[[int], None]] = None,
                    rows: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """One full forward pass per measurement. `rows`: compute only the singles of these
    decided layers and their pairs with later layers (the rest stays 0), so that the
    matrices of a partition of the layers sum to the full matrix."""
    options = qm.options
    P, L, B = len(options), len(qm.decided), len(qm.candidates)
    mine = row_set(rows, L)
    qm.set_cached(False)
    try:
        qm.reset()
        float_logits = qm(x)
        loss = make_loss(loss_kind, y, float_logits)
        L0 = float(loss(float_logits))
        Lt = np.zeros((P, P), dtype=np.float64)
        for i, opt in enumerate(options):
            if i // B not in mine:
                continue
            qm.apply([opt])
            Lt[i, i] = float(loss(qm(x))) - L0
            if tick:
                tick(1)
        for i in range(P):
            if i // B not in mine:
                continue
            for j in range(i + 1, P):
                if i // B == j // B:
                    continue
                qm.apply([options[i], options[j]])
                Lt[i, j] = Lt[j, i] = float(loss(qm(x))) - L0
                if tick:
                    tick(1)
    finally:
        qm.reset()
        qm.set_cached(True)
    return {"Ltilde": Lt, "L0": np.float64(L0)}

"""Choosing the fast engine's runner for a model, and running it on one batch."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .branching import BranchingRunner, clado_branching
from .fast import FastRunner, StackedRun
from .graph import NotTraceable
from .reference import row_set

Runner = Union[FastRunner, BranchingRunner]


def make_runner(qm, max_batch: Optional[int] = None) -> Tuple[Optional[Runner], Optional[str]]:
    """(runner, None) for the fast engine: a `FastRunner`, or a `BranchingRunner` when the
    FastRunner refuses the model (a decided layer called more than once); or (None, reason)
    when neither can run it (torch.fx cannot trace it, or its graph cannot be run safely with
    shared values), the caller then using the reference engine. Only `NotTraceable` means
    refusal; any other exception is a bug and propagates."""
    try:
        return FastRunner(qm, max_batch=max_batch), None
    except NotTraceable as e:
        fast_refused = str(e)
    try:
        return BranchingRunner(qm), None
    except NotTraceable as e:
        branching_refused = str(e)
    if branching_refused == fast_refused:
        return None, fast_refused
    return None, f"{fast_refused}; node by node: {branching_refused}"


@torch.no_grad()
def clado_fast(qm, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
               tick: Optional[Callable[[int], None]] = None,
               runner: Optional[Runner] = None, max_batch: Optional[int] = None,
               rows: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """The fast engine. `max_batch`: most perturbations stacked in one pass (default: the
    runner's, else `auto_max_batch`). `rows`: as for `clado_reference`. Raises NotTraceable
    when no runner is given and the model cannot be run by one."""
    if runner is None:
        runner, why = make_runner(qm, max_batch=max_batch)
        if runner is None:
            raise NotTraceable(f"the model cannot be traced by torch.fx ({why}); use the reference engine")
    qm.reset()
    qm.set_cached(True)
    try:
        mine = row_set(rows, len(qm.decided))
        if isinstance(runner, FastRunner):
            Lt, L0 = StackedRun(qm, runner, x, y, loss_kind, tick, max_batch, mine).run()
        else:
            Lt, L0 = clado_branching(qm, runner, x, y, loss_kind, tick, mine)
    finally:
        qm.reset()
    return {"Ltilde": Lt, "L0": np.float64(L0)}

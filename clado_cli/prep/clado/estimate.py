"""Seconds per batch of the fast engine, from a timed probe of its real work (`clado prep
--dry-run`; bench/dry_run.py compares the estimate with measured times).

The FastRunner's batch is one row per decided layer l: a branch of l's widths, then passes at
every later layer m (pairs (l, m)). A pass at m costs about the same in every row, so the
probe runs row 0 alone, which holds a pass at every m, timing each (`run_pass`), and adds them
up as the whole batch does: the passes at m run in rows 0..m-1, m times. What is left of row 0
(its branch's own forward and the losses) shrinks along the model: (L+1)/2 times row 0's. The
first stacked pass at each layer is checked against two separate passes (fast.py), and row 0
checks its own branch: a batch does both once, and so they are counted. The float pass,
stacking plan and other work of every batch is timed on its own (no row at all)."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict

import torch

from .engine import clado_fast
from .fast import FastRunner


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def fast_seconds_per_batch(qm, runner: FastRunner, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    L = len(qm.decided)
    per_m: Dict[int, float] = defaultdict(float)
    once = [0.0]                  # checks of stacked passes, and row 0's own layer: once a batch
    pending: Dict[int, int] = defaultdict(int)
    plain = runner.run_pass

    def run_pass(m, bits, trunk, parent, p0, p1, N):
        rows = len(bits) * (p1 - p0)
        if rows > 1 and runner.stack_ok[m] is None:
            pending[m] = 2        # fast.py checks the first stacked pass against two single ones
        checking = rows == 1 and pending[m] > 0
        pending[m] -= checking
        _sync(x)
        t = time.perf_counter()
        out = plain(m, bits, trunk, parent, p0, p1, N)
        _sync(x)
        dt = time.perf_counter() - t
        if checking or m == 0:
            once[0] += dt
        else:
            per_m[m] += dt
        return out

    def timed(rows) -> float:
        _sync(x)
        t = time.perf_counter()
        clado_fast(qm, x, y, loss, runner=runner, rows=rows)
        _sync(x)
        return time.perf_counter() - t

    fixed = timed([])
    runner.run_pass = run_pass
    try:
        row0 = timed([0])
    finally:
        del runner.run_pass
    rest = max(row0 - fixed - sum(per_m.values()) - once[0], 0.0)
    return fixed + once[0] + sum(m * s for m, s in per_m.items()) + rest * (L + 1) / 2

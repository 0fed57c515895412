"""Prep across processes with PyTorch's own runtime.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set), `clado prep …` splits the work:

- at least as many batches to compute as ranks: whole batches per rank (batch i of the missing
  list goes to rank i mod world); each rank writes the files it computed;
- fewer: every batch is split inside — CLADO by the first layer of each option pair, MPQCO by
  samples, HAWQ (per-layer estimator) by layers — the parts are summed with all_reduce
  (disjoint parts, so the sum is exact) and rank 0 writes the file.

Every rank uses its own device (`cuda:LOCAL_RANK` with NCCL, or the CPU with gloo). Rank 0
calibrates the quantizers and caches them; the others load that calibration, so all ranks
quantize identically. Progress is shown by rank 0 only.

`--shard K/N` (see prep.run.PrepRun) is the same split of whole batches without torch.distributed,
for job arrays; `clado cache merge` then joins the shards.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import numpy as np
import torch


def world() -> tuple:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def maybe_distributed_prep(cfg, method: str, sb: int, eb: int, force: bool = False, dry_run: bool = False,
                           shard=None) -> Optional[Dict[str, Any]]:
    """`clado prep`: under torchrun the ranks split the work, else one local PrepRun. Returns
    the summary (None on ranks other than 0)."""
    from .prep import run_prep
    from .session import Session

    rank, size, _ = world()
    if size <= 1 or dry_run:
        return run_prep(Session(cfg), method, sb, eb, force=force, dry_run=dry_run, shard=shard)
    if shard is not None:
        from .errors import UsageError

        raise UsageError("shard splits work without torch.distributed; under torchrun the ranks split it already",
                         params=("shard",))
    return distributed_prep(cfg, method, sb, eb, force=force)


def _reduce_sum(values: Dict[str, np.ndarray], device) -> Dict[str, np.ndarray]:
    import torch.distributed as dist

    out = {}
    for name in sorted(values):
        t = torch.from_numpy(np.ascontiguousarray(values[name], dtype=np.float64)).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t.cpu().numpy()
    return out


def distributed_prep(cfg, method: str, sb: int, eb: int, force: bool = False) -> Optional[Dict[str, Any]]:
    """The process-group plumbing around one PrepRun per rank."""
    import torch.distributed as dist

    from .console import set_quiet
    from .prep import PrepRun
    from .session import Session, resolve_device

    rank, size, local = world()
    resolve_device(cfg.device)  # a missing GPU is one clear error on every rank
    use_cuda = cfg.device in ("cuda", "auto") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    comm_device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    t0 = time.time()
    if rank != 0:
        set_quiet(True)
    # Everything before the process group exists: MQBench's observers all-reduce their ranges
    # once torch.distributed is initialized (mqbench.utils.sync_tensor), which would deadlock a
    # calibration that runs on one rank. The cache's calibration lock makes one process
    # calibrate; the others wait and load its result.
    run = PrepRun(Session(cfg, device=comm_device), method, sb, eb, force=force)
    run.cache.ensure()
    if force and rank == 0:
        run.cache.forget_params(run.kind)
    run.session.qmodel  # noqa: B018
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        if rank == 0:
            run.cache.check_params(run.kind, run.method.cache_params(cfg))
        # every rank reads the same list: nothing is written before the barrier
        todo = run.todo()
        dist.barrier()
        run.setup(params=False)
        if len(todo) >= size:
            summary = run.run(only=todo[rank::size])
        else:
            summary = run.run_split(todo, rank, size, reduce=lambda v: _reduce_sum(v, comm_device), write=rank == 0)
        dist.barrier()
        if rank != 0:
            return None
        summary.computed, summary.skipped = todo, [k for k in run.ks if k not in todo]
        summary.files = [str(run.cache.batch_path(run.kind, k)) for k in run.ks]
        summary.batches = list(run.ks)
        summary.ranks, summary.split = size, "batches" if len(todo) >= size else "within-batch"
        summary.seconds = round(time.time() - t0, 3)
        if summary.split == "batches":
            summary.engine, summary.negative_singles, summary.stack = None, None, None
        return summary.to_dict()   # memory: rank 0's
    finally:
        dist.destroy_process_group()

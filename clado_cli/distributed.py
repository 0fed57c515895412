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

`--shard K/N` (see prep.run_prep) is the same split of whole batches without torch.distributed,
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
    from .prep import run_prep
    from .session import Session

    rank, size, _ = world()
    if size <= 1 or dry_run:
        return run_prep(Session(cfg), method, sb, eb, force=force, dry_run=dry_run, shard=shard)
    if shard is not None:
        from .errors import UsageError

        raise UsageError("--shard splits work without torch.distributed; under torchrun the ranks split it already")
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
    import torch.distributed as dist

    from .console import set_quiet
    from .prep import compute_batch_part, finish_part, method_params, run_prep
    from .prep.memory import peak_report, reset_peak
    from .session import Session

    rank, size, local = world()
    use_cuda = cfg.device in ("cuda", "auto") and torch.cuda.is_available()
    if cfg.device == "cuda" and not use_cuda:
        from .errors import EnvironmentProblem

        raise EnvironmentProblem("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)")
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
    s = Session(cfg)
    s.device = comm_device
    s.check_batch_range(sb, eb)
    s.cache.ensure()
    if force and rank == 0:
        s.cache.forget_params(method)
    s.qmodel  # noqa: B018
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        if rank == 0:
            s.cache.check_params(method, method_params(s, method))
        # every rank reads the same list: nothing is written before the barrier
        todo = [k for k in range(sb, eb + 1) if force or not s.cache.has_batch(method, k)]
        dist.barrier()
        reset_peak(comm_device)   # the CUDA peak of the prep work, as run_prep reports it
        if len(todo) >= size:
            run_prep(s, method, sb, eb, force=force, only=todo[rank::size])
        else:
            for k in todo:
                tb = time.time()
                values = _reduce_sum(compute_batch_part(s, method, k, rank, size), comm_device)
                if rank == 0:
                    values = finish_part(s, method, values)
                    s.cache.write_batch(method, k, values, n=s.cfg.data.bs,
                                        meta={"engine": f"distributed x{size}", "seconds": round(time.time() - tb, 3)})
        dist.barrier()
        if rank != 0:
            return None
        ks = list(range(sb, eb + 1))
        return {"method": method, "fingerprint": s.fingerprint, "cache": str(s.cache.root), "engine": None,
                "batches": ks, "computed": todo, "skipped": [k for k in ks if k not in todo],
                "files": [str(s.cache.batch_path(method, k)) for k in ks], "ranks": size,
                "split": "batches" if len(todo) >= size else "within-batch",
                "seconds": round(time.time() - t0, 3), "negative_singles": None, "stack": None,
                "memory": peak_report(comm_device)}   # rank 0's
    finally:
        dist.destroy_process_group()

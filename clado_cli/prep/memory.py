"""How much memory a call needs: the peak bytes of torch tensors alive at once during it,
beyond those alive before it. Used by bench/prep_speed.py and by the tests of the fast
engine's memory bound (docs/performance.md)."""
from __future__ import annotations

import gc
from typing import Any, Callable, Tuple

import torch


def tensor_peak(fn: Callable[[], Any], device="cpu") -> Tuple[Any, int]:
    """(fn's result, peak bytes). On CUDA, the allocator's own peak
    (`torch.cuda.max_memory_allocated` beyond what was allocated before). On the CPU, counted
    exactly from the allocation and free events of torch's profiler (`profile_memory=True`):
    the CPU analogue, blind to malloc's caches."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return out, peak


def reset_peak(device) -> None:
    """Start a new peak for `peak_report` (CUDA only: the process's resident peak cannot be
    reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_report(device) -> dict:
    """What this process has held at its peak, for the prep summary: on CUDA the allocator's
    peak since `reset_peak` (`torch.cuda.max_memory_allocated`); always the process's resident
    high-water mark (`ru_maxrss`: everything, the interpreter and libraries included)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"process_peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.device(device).type == "cuda":
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out

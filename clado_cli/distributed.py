"""Prep across processes: torchrun ranks (torch.distributed) or independent shards."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional


def world() -> tuple:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def maybe_distributed_prep(cfg, method: str, sb: int, eb: int, force: bool = False, dry_run: bool = False,
                           shard=None) -> Optional[Dict[str, Any]]:
    from .prep import run_prep
    from .session import Session

    rank, size, _ = world()
    if size <= 1 or dry_run:
        return run_prep(Session(cfg), method, sb, eb, force=force, dry_run=dry_run, shard=shard)
    return distributed_prep(cfg, method, sb, eb, force=force)


def distributed_prep(cfg, method, sb, eb, force=False):  # filled in by the scale-out work
    from .errors import UsageError

    raise UsageError("distributed prep under torchrun is not available in this build")

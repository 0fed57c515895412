"""Merge shard outputs (fingerprint directories) into one cache."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import CacheError
from .cache import Cache, Stored, ranges
from .files import atomic_write


def merge_caches(sources: List[Path], into: Path, kinds: Optional[Sequence[Stored]] = None,
                 check: Optional[Callable[[Stored, Dict[str, Any], Path], None]] = None) -> Dict[str, Any]:
    """Copy every batch of `sources` (verified first: checksum, and `check(kind, arrays, path)`
    on its content) into the cache of the same fingerprint under `into`. A batch the target
    already has is verified the same way, never trusted. `kinds`: the methods' directories
    (those on disk are merged too)."""
    caches = [Cache.from_dir(Path(s)) for s in sources]
    first = caches[0]
    for c in caches[1:]:
        if c.fingerprint != first.fingerprint:
            raise CacheError(f"cannot merge caches of different fingerprints: {first.fingerprint} ({first.root}) "
                             f"and {c.fingerprint} ({c.root})")
    target = Cache.open(Path(into), first.manifest)
    target.ensure()
    report: Dict[str, Any] = {"cache": str(target.root), "fingerprint": target.fingerprint, "methods": {}}
    all_kinds: Dict[str, Stored] = {}
    for c in caches:
        for kind in c._with_disk_kinds(kinds):
            all_kinds.setdefault(kind.dirname, kind)
    for kind in all_kinds.values():
        copied, present = [], []
        for c in caches:
            if c.root.resolve() == target.root.resolve():
                continue
            params = c.read_params(kind)
            if params is not None:
                target.check_params(kind, params)
            for k in c.batches(kind):
                arrays, _ = c.read_batch(kind, k)  # verifies the checksum before anything is copied
                if check is not None:
                    check(kind, arrays, c.batch_path(kind, k))
                if target.has_batch(kind, k):
                    there, _ = target.read_batch(kind, k)
                    if check is not None:
                        check(kind, there, target.batch_path(kind, k))
                    present.append(k)
                    continue
                src = c.batch_path(kind, k)
                dst = target.batch_path(kind, k)
                atomic_write(dst, src.read_bytes())
                atomic_write(dst.with_suffix(".json"), src.with_suffix(".json").read_bytes())
                copied.append(k)
        ks = target.batches(kind)
        if ks or copied:
            report["methods"][kind.name] = {"copied": sorted(copied), "present": sorted(set(present)),
                                            "batches": ranges(ks)}
    qs = [c for c in caches if (c.root / "quant_state.safetensors").exists()]
    if qs and not (target.root / "quant_state.safetensors").exists():
        target.save_quant_state(qs[0].load_quant_state())
    gaps = {}
    for kind in all_kinds.values():
        ks = target.batches(kind)
        missing = sorted(set(range(min(ks), max(ks) + 1)) - set(ks)) if ks else []
        if missing:
            gaps[kind.name] = ranges(missing)
    report["missing"] = gaps
    return report

"""Merge shard outputs (fingerprint directories) into one cache."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ..errors import CacheError
from .cache import METHOD_DIRS, Cache, _ranges, atomic_write


def merge_caches(sources: List[Path], into: Path) -> Dict[str, Any]:
    caches = [Cache.from_dir(Path(s)) for s in sources]
    first = caches[0]
    for c in caches[1:]:
        if c.fingerprint != first.fingerprint:
            raise CacheError(f"cannot merge caches of different fingerprints: {first.fingerprint} ({first.root}) "
                             f"and {c.fingerprint} ({c.root})")
    target = Cache.open(Path(into), first.manifest)
    target.ensure()
    report: Dict[str, Any] = {"cache": str(target.root), "fingerprint": target.fingerprint, "methods": {}}
    for method in METHOD_DIRS:
        copied, present = [], []
        for c in caches:
            if c.root.resolve() == target.root.resolve():
                continue
            params = c.method_dir(method) / "params.json"
            if params.exists():
                import json

                target.check_params(method, json.loads(params.read_text()))
            for k in c.batches(method):
                c.read_batch(method, k)  # verifies the checksum before anything is copied
                if target.has_batch(method, k):
                    present.append(k)
                    continue
                src = c.batch_path(method, k)
                dst = target.batch_path(method, k)
                atomic_write(dst, src.read_bytes())
                atomic_write(dst.with_suffix(".json"), src.with_suffix(".json").read_bytes())
                copied.append(k)
        qs = [c for c in caches if (c.root / "quant_state.safetensors").exists()]
        if qs and not (target.root / "quant_state.safetensors").exists():
            target.save_quant_state(qs[0].load_quant_state())
        ks = target.batches(method)
        if ks or copied:
            report["methods"][method] = {"copied": sorted(copied), "present": sorted(set(present)),
                                         "batches": _ranges(ks)}
    gaps = {}
    for method, info in report["methods"].items():
        ks = target.batches(method)
        missing = sorted(set(range(min(ks), max(ks) + 1)) - set(ks)) if ks else []
        if missing:
            gaps[method] = _ranges(missing)
    report["missing"] = gaps
    return report

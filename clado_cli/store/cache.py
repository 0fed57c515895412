"""Fingerprinted, per-batch sensitivity caches.

Layout (one directory per fingerprint, i.e. per hash of the manifest):

    <cache_dir>/<fingerprint>/manifest.json
    <cache_dir>/<fingerprint>/quant_state.safetensors (+ .json)  calibrated quantizer parameters
    <cache_dir>/<fingerprint>/<dir>/batch_00003.npz (+ .json)     one file per batch and method
    <cache_dir>/<fingerprint>/<dir>/params.json                   method settings the numbers depend on

Each method names its `<dir>` with a `Stored` descriptor (the release's names: Ltilde for
CLADO, DELTAL for MPQCO, HAWQ_DELTAL for the HAWQ-V3 traces); the cache itself knows no method.

Each batch file holds its values and its sample count; its sidecar JSON holds the sha256 of
the npz, verified on every load. Files are written to a temp name and renamed, so an
interrupted run leaves only whole files (temp names never count as data). No pickle: npz
is read with allow_pickle=False, tensors with safetensors.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import CacheError, EnvironmentProblem
from .files import atomic_write, json_bytes as _json_bytes, read_json, sha256_bytes

BATCH_RE = re.compile(r"^batch_(\d{5})\.npz$")
MANIFEST = "manifest.json"


def fingerprint_of(manifest: Dict[str, Any]) -> str:
    """The cache directory's name: a hash of everything the cached numbers depend on."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stored:
    """What one method keeps in a cache: its directory and how messages name it.

    `name` is the prep command that fills it (`clado prep NAME`), `dirname` the directory,
    `label` the words a message uses for its numbers ("CLADO sensitivities")."""

    name: str
    dirname: str
    label: str

    @classmethod
    def found(cls, directory: Path) -> "Stored":
        """A directory found on disk, named by the method its batch sidecars record."""
        name = directory.name
        for side in sorted(directory.glob("batch_*.json")):
            try:
                recorded = json.loads(side.read_text()).get("method")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(recorded, str) and recorded:
                name = recorded
                break
        return cls(name, directory.name, f"{name} values ({directory.name}/)")


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, CacheError)


@dataclass
class BatchInfo:
    kind: Stored
    k: int
    n: int
    bytes: int
    path: Path


class Cache:
    """One fingerprint directory."""

    def __init__(self, root: Path, manifest: Dict[str, Any], fingerprint: str):
        self.root = root
        self.manifest = manifest
        self.fingerprint = fingerprint

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, cache_dir: Path, manifest: Dict[str, Any]) -> "Cache":
        """The directory for this manifest (created by `ensure`, on the first write)."""
        fp = fingerprint_of(manifest)
        return cls(Path(cache_dir) / fp, manifest, fp)

    def ensure(self) -> None:
        """Create the directory and its manifest (first write wins; later ones must match)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentProblem(f"cache directory {self.root.parent} is not writable: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise EnvironmentProblem(f"cache directory {self.root} is not writable")
        mpath = self.root / MANIFEST
        if mpath.exists():
            on_disk = _read_json(mpath, "cache manifest")
            if on_disk != self.manifest:
                raise CacheError(f"cache {self.root} holds a manifest that does not match this config "
                                 f"(fingerprint collision or a hand-edited cache)")
        else:
            atomic_write(mpath, _json_bytes(self.manifest))

    @classmethod
    def from_dir(cls, path: Path) -> "Cache":
        """Open an existing fingerprint directory by path, checking its manifest's hash."""
        path = Path(path)
        if not path.is_dir():
            raise CacheError(f"cache directory not found: {path}")
        manifest = _read_json(path / MANIFEST, "cache manifest")
        fp = fingerprint_of(manifest)
        if fp != path.name:
            raise CacheError(f"cache {path}: its manifest hashes to {fp}, not to the directory name {path.name} "
                             f"(edited or copied under the wrong name)")
        return cls(path, manifest, fp)

    # -- method parameters -----------------------------------------------------------------
    def kind_dir(self, kind: Stored) -> Path:
        return self.root / kind.dirname

    def kinds_on_disk(self) -> List[Stored]:
        """Every directory of this cache that holds batch files (see `Stored.found`)."""
        if not self.root.is_dir():
            return []
        return [Stored.found(d) for d in sorted(self.root.iterdir())
                if d.is_dir() and any(BATCH_RE.match(f.name) for f in d.iterdir())]

    def forget_params(self, kind: Stored) -> None:
        """Drop the recorded method settings (a forced recompute runs under the current ones)."""
        try:
            (self.kind_dir(kind) / "params.json").unlink()
        except FileNotFoundError:
            pass

    def read_params(self, kind: Stored) -> Optional[Dict[str, Any]]:
        p = self.kind_dir(kind) / "params.json"
        if not p.exists():
            return None
        on_disk = _read_json(p, f"{kind.label} parameters")
        if not isinstance(on_disk, dict):
            raise CacheError(f"{kind.label} parameters {p} are not a JSON object")
        return on_disk

    def check_params(self, kind: Stored, params: Mapping[str, Any], write: bool = True) -> None:
        """Settings that change one method's numbers (e.g. HAWQ's estimator) without
        changing the others'; a cache made with other settings is refused."""
        on_disk = self.read_params(kind)
        if on_disk is not None:
            if on_disk != dict(params):
                diff = first_difference(on_disk, dict(params))
                raise CacheError(f"the {kind.label} in cache {self.fingerprint} were made with other {kind.name} "
                                 f"settings ({diff}); force a recompute or use another cache directory")
        elif write:
            atomic_write(self.kind_dir(kind) / "params.json", _json_bytes(dict(params)))

    # -- batches -------------------------------------------------------------------------
    def batch_path(self, kind: Stored, k: int) -> Path:
        return self.kind_dir(kind) / f"batch_{k:05d}.npz"

    def has_batch(self, kind: Stored, k: int) -> bool:
        p = self.batch_path(kind, k)
        return p.is_file() and p.with_suffix(".json").is_file()

    def write_batch(self, kind: Stored, k: int, arrays: Mapping[str, np.ndarray], n: int,
                    meta: Optional[Mapping[str, Any]] = None) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(a) for name, a in arrays.items()}, n=np.asarray(n, dtype=np.int64))
        data = buf.getvalue()
        p = self.batch_path(kind, k)
        # drop an old sidecar first: a kill between the two writes below then leaves the batch
        # "not cached" (recomputed on resume), never an old sidecar beside a new npz
        try:
            p.with_suffix(".json").unlink()
        except FileNotFoundError:
            pass
        atomic_write(p, data)
        side = {"sha256": sha256_bytes(data), "n": int(n), "k": int(k), "method": kind.name,
                "fingerprint": self.fingerprint, **(dict(meta) if meta else {})}
        atomic_write(p.with_suffix(".json"), _json_bytes(side))
        return p

    def read_batch(self, kind: Stored, k: int) -> Tuple[Dict[str, np.ndarray], int]:
        p = self.batch_path(kind, k)
        if not self.has_batch(kind, k):
            raise CacheError(f"batch {k} of the {kind.label} is not in cache {self.fingerprint} "
                             f"(run clado prep {kind.name})")
        side = _read_json(p.with_suffix(".json"), "batch sidecar")
        if not isinstance(side, dict):
            raise CacheError(f"batch sidecar {p.with_suffix('.json')} is not a JSON object")
        mine = {"fingerprint": self.fingerprint, "method": kind.name, "k": k}
        for key, want in mine.items():
            if key in side and side[key] != want:
                raise CacheError(f"cache file {p} belongs to {key} {side[key]!r}, not {want!r} (copied in from "
                                 f"another cache?); delete it and re-run prep")
        data = p.read_bytes()
        if sha256_bytes(data) != side.get("sha256"):
            raise CacheError(f"cache file {p} fails its checksum (truncated or altered); delete it and re-run prep")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except Exception as exc:
            raise CacheError(f"cache file {p} is not a readable npz: {exc}") from None
        if "n" not in arrays:
            raise CacheError(f"cache file {p} has no sample count")
        count = arrays.pop("n")
        if count.shape != () or not np.issubdtype(count.dtype, np.integer) or int(count) <= 0:
            raise CacheError(f"cache file {p} has no valid sample count (a positive integer)")
        n = int(count)
        if "n" in side and (not isinstance(side["n"], int) or isinstance(side["n"], bool) or side["n"] != n):
            raise CacheError(f"cache file {p} holds {n} samples but its sidecar says {side['n']!r}")
        return arrays, n

    def batches(self, kind: Stored) -> List[int]:
        d = self.kind_dir(kind)
        if not d.is_dir():
            return []
        ks = []
        for f in d.iterdir():
            m = BATCH_RE.match(f.name)
            if m and f.with_suffix(".json").is_file():
                ks.append(int(m.group(1)))
        return sorted(ks)

    def batch_infos(self, kind: Stored) -> List[BatchInfo]:
        out = []
        for k in self.batches(kind):
            p = self.batch_path(kind, k)
            side = _read_json(p.with_suffix(".json"), "batch sidecar")
            out.append(BatchInfo(kind, k, int(side.get("n", 0)) if isinstance(side, dict) else 0, p.stat().st_size, p))
        return out

    def combine(self, kind: Stored, ks: Optional[Iterable[int]] = None,
                check: Optional[Callable[[Dict[str, np.ndarray], Path], None]] = None, se: bool = False):
        """Sample-weighted mean of every array over the batches ks (all cached by default):
        (means, samples, batches); docs/methods.md, "Combining batches". `check(arrays, path)`
        sees each batch as read. `se`: also the standard error of each mean across the batches
        (None with one batch), from the same single read: docs/methods.md, "Noise"."""
        cached = self.batches(kind)
        if isinstance(ks, range) and len(ks) > len(cached):
            # a range longer than what is cached (even --eb 10**12) is refused without listing it
            missing = ranges(sorted(set(ks) - set(cached))) if len(ks) <= 100_000 else \
                f"{ks.start}..{ks.stop - 1}"
            raise CacheError(f"batches {missing} of the {kind.label} are not cached in {self.fingerprint} "
                             f"(cached: {ranges(cached) or 'none'})")
        ks = sorted(set(ks)) if ks is not None else cached
        if not ks:
            raise CacheError(f"no {kind.label} are cached in {self.root} (run clado prep {kind.name})")
        have = set(cached)
        missing = [k for k in ks if k not in have]
        if missing:
            raise CacheError(f"batches {ranges(missing)} of the {kind.label} are not cached in {self.fingerprint} "
                             f"(cached: {ranges(cached) or 'none'})")
        total: Dict[str, np.ndarray] = {}
        kept: List[Dict[str, np.ndarray]] = []   # per-batch values, for the standard errors
        counts: List[int] = []
        n_total = 0
        for k in ks:
            arrays, n = self.read_batch(kind, k)
            if check is not None:
                check(arrays, self.batch_path(kind, k))
            for name, a in arrays.items():
                a = a.astype(np.float64)
                total[name] = total[name] + n * a if name in total else n * a
            if se:
                kept.append(arrays)
                counts.append(n)
            n_total += n
        means = {name: a / n_total for name, a in total.items()}
        if not se:
            return means, n_total, ks
        errors = None
        if len(ks) > 1:   # two passes over the kept values: exact zeros for equal batches
            from ..stats import weighted_se

            errors = {name: weighted_se([b[name] for b in kept], counts) for name in means}
        return means, n_total, ks, errors

    # -- claims (two processes on one cache never compute the same batch) -------------------
    @contextmanager
    def claim(self, kind: Stored, k: int, wait: bool):
        """Yields True if this process holds the batch's lock (False if another does and
        wait is False)."""
        from filelock import FileLock, Timeout

        lock_path = self.kind_dir(kind) / f".batch_{k:05d}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        holder = lock_path.with_suffix(".holder")
        try:
            import socket
            import time

            holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        except OSError:
            pass
        try:
            yield True
        finally:
            try:
                holder.unlink()
            except OSError:
                pass
            lock.release()

    def holder(self, kind: Stored, k: int) -> Optional[Dict[str, Any]]:
        """Who holds batch k's claim ({pid, host, since}), as far as it recorded it."""
        p = self.kind_dir(kind) / f".batch_{k:05d}.holder"
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    # -- calibration ---------------------------------------------------------------------
    @contextmanager
    def calibration_lock(self):
        """Held while calibrating, so that two processes on one cache calibrate once (the
        second waits, then loads the first one's state)."""
        from filelock import FileLock

        self.ensure()
        with FileLock(str(self.root / ".quant_state.lock")):
            yield

    def load_quant_state(self):
        p = self.root / "quant_state.safetensors"
        side = p.with_suffix(".json")
        if not (p.is_file() and side.is_file()):
            return None
        data = p.read_bytes()
        meta = _read_json(side, "quantizer state sidecar")
        if not isinstance(meta, dict) or sha256_bytes(data) != meta.get("sha256"):
            raise CacheError(f"cache file {p} fails its checksum (truncated or altered); delete it to recalibrate")
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:
            raise CacheError(f"cache file {p} is not a readable safetensors file: {exc}") from None

    def save_quant_state(self, state) -> None:
        from safetensors.torch import save

        self.ensure()
        data = save({k: v.contiguous() for k, v in state.items()})
        p = self.root / "quant_state.safetensors"
        atomic_write(p, data)
        atomic_write(p.with_suffix(".json"), _json_bytes({"sha256": sha256_bytes(data)}))

    # -- per-layer costs (not part of the fingerprint: they follow from the manifest) ----------
    def save_layer_costs(self, macs: Mapping[str, int], act_elements: Optional[Mapping[str, int]] = None) -> None:
        """MACs and input-activation elements per sample of each decided and fixed layer,
        measured once by a forward pass."""
        self.ensure()
        data: Dict[str, Any] = {"macs": {k: int(v) for k, v in macs.items()}}
        if act_elements is not None:
            data["act_elements"] = {k: int(v) for k, v in act_elements.items()}
        atomic_write(self.root / "layer_costs.json", _json_bytes(data))

    def load_layer_costs(self) -> Optional[Dict[str, int]]:
        """The saved MACs per layer, or None; a file that does not fit the manifest is an error."""
        return self._layer_counts("macs", "MAC counts", required=True)

    def load_act_elements(self) -> Optional[Dict[str, int]]:
        """The saved input-activation elements per sample of each layer, or None (not measured
        yet, or a file written before they were)."""
        return self._layer_counts("act_elements", "input-activation element counts", required=False)

    def _layer_counts(self, key: str, what: str, required: bool) -> Optional[Dict[str, int]]:
        p = self.root / "layer_costs.json"
        if not p.is_file():
            return None
        data = _read_json(p, "layer costs")
        counts = data.get(key) if isinstance(data, dict) else None
        if counts is None and not required and isinstance(data, dict):
            return None
        layers = self.manifest.get("layers", {})
        names = {n for n, _ in layers.get("decided", []) + layers.get("fixed", [])}
        if not isinstance(counts, dict) or set(counts) != names or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise CacheError(f"{p} does not hold non-negative {what} for exactly this cache's layers; "
                             f"delete it (the next prep measures them again)")
        return counts

    # -- checking --------------------------------------------------------------------------
    def verify(self, kinds: Optional[Sequence[Stored]] = None,
               check: Optional[Callable[[Stored, Dict[str, np.ndarray], Path], None]] = None) -> List[str]:
        """Problems found (empty when every file checks out). `kinds`: the directories to
        check (default: every one that holds batch files); `check(kind, arrays, path)` also
        validates each batch's content (names, shapes, finiteness) and raises CacheError."""
        problems = []
        try:
            Cache.from_dir(self.root)
        except CacheError as exc:
            problems.append(str(exc))
        for kind in self._with_disk_kinds(kinds):
            for k in self.batches(kind):
                try:
                    arrays, _ = self.read_batch(kind, k)
                    if check is not None:
                        check(kind, arrays, self.batch_path(kind, k))
                except CacheError as exc:
                    problems.append(str(exc))
        if (self.root / "quant_state.safetensors").exists():
            try:
                self.load_quant_state()
            except CacheError as exc:
                problems.append(str(exc))
        return problems

    def _with_disk_kinds(self, kinds: Optional[Sequence[Stored]]) -> List[Stored]:
        """`kinds` plus any directory on disk that none of them names."""
        kinds = list(kinds or [])
        named = {k.dirname for k in kinds}
        return kinds + [k for k in self.kinds_on_disk() if k.dirname not in named]

    def stray_temp_files(self) -> List[Path]:
        return [p for p in self.root.rglob("*.tmp")]


def list_caches(cache_dir: Path) -> List[Cache]:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    out = []
    for d in sorted(cache_dir.iterdir()):
        if d.is_dir() and (d / MANIFEST).is_file():
            try:
                out.append(Cache.from_dir(d))
            except CacheError:
                out.append(Cache(d, {}, d.name))
    return out


def ranges(ks: List[int]) -> str:
    """1,2,3,5 -> "1..3,5"."""
    ks = sorted(ks)
    parts, i = [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        parts.append(f"{ks[i]}" if i == j else f"{ks[i]}..{ks[j]}")
        i = j + 1
    return ",".join(parts)


def first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b or a[key] != b[key]:
                if key in a and key in b:
                    return first_difference(a[key], b[key], f"{path}.{key}" if path else key)
                return f"{path + '.' if path else ''}{key} present on one side only"
    short = lambda v: (json.dumps(v)[:60] + "…") if len(json.dumps(v)) > 60 else json.dumps(v)
    return f"{path or 'value'} is {short(a)} in the cache, {short(b)} here"

"""Fingerprinted, per-batch sensitivity caches.

Layout (one directory per fingerprint, i.e. per hash of the manifest):

    <cache_dir>/<fingerprint>/manifest.json
    <cache_dir>/<fingerprint>/quant_state.safetensors (+ .json)  calibrated quantizer parameters
    <cache_dir>/<fingerprint>/Ltilde/batch_00003.npz (+ .json)    CLADO, one file per batch
    <cache_dir>/<fingerprint>/DELTAL/...                          MPQCO
    <cache_dir>/<fingerprint>/HAWQ_DELTAL/...                     HAWQ-V3 traces
    <cache_dir>/<fingerprint>/<METHOD>/params.json                method settings the numbers depend on

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
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import CacheError, EnvironmentProblem

METHOD_DIRS = {"clado": "Ltilde", "mpqco": "DELTAL", "hawq": "HAWQ_DELTAL"}
BATCH_RE = re.compile(r"^batch_(\d{5})\.npz$")
MANIFEST = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over the target. A directory
    that cannot be written (permissions, a file in the way, a full or read-only disk) is an
    EnvironmentProblem; the target is then left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{what} {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None


@dataclass
class BatchInfo:
    method: str
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
        """Open (and create if needed) the directory for this manifest."""
        from ..session import fingerprint_of

        fp = fingerprint_of(manifest)
        root = Path(cache_dir) / fp
        cache = cls(root, manifest, fp)
        return cache

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
        from ..session import fingerprint_of

        path = Path(path)
        if not path.is_dir():
            raise CacheError(f"cache directory not found: {path}")
        manifest = _read_json(path / MANIFEST, "cache manifest")
        fp = fingerprint_of(manifest)
        if fp != path.name:
            raise CacheError(f"cache {path}: its manifest hashes to {fp}, not to the directory name {path.name} "
                             f"(edited or copied under the wrong name)")
        return cls(path, manifest, fp)

    def check_matches(self, manifest: Dict[str, Any], what: str = "this config") -> None:
        if manifest != self.manifest:
            diff = _first_difference(self.manifest, manifest)
            raise CacheError(f"cache {self.fingerprint} does not match {what}: {diff}")

    # -- method parameters -----------------------------------------------------------------
    def method_dir(self, method: str) -> Path:
        return self.root / METHOD_DIRS[method]

    def forget_params(self, method: str) -> None:
        """Drop the recorded method settings (--force recomputes under the current ones)."""
        try:
            (self.method_dir(method) / "params.json").unlink()
        except FileNotFoundError:
            pass

    def check_params(self, method: str, params: Mapping[str, Any], write: bool = True) -> None:
        """Settings that change one method's numbers (e.g. HAWQ's estimator) without
        changing the others'; a cache made with other settings is refused."""
        p = self.method_dir(method) / "params.json"
        if p.exists():
            on_disk = _read_json(p, f"{method} parameters")
            if on_disk != dict(params):
                diff = _first_difference(on_disk, dict(params))
                raise CacheError(f"{METHOD_DIRS[method]} cache in {self.fingerprint} was made with other "
                                 f"{method} settings ({diff}); use --force to recompute or another cache_dir")
        elif write:
            atomic_write(p, _json_bytes(dict(params)))

    # -- batches -------------------------------------------------------------------------
    def batch_path(self, method: str, k: int) -> Path:
        return self.method_dir(method) / f"batch_{k:05d}.npz"

    def has_batch(self, method: str, k: int) -> bool:
        p = self.batch_path(method, k)
        return p.is_file() and p.with_suffix(".json").is_file()

    def write_batch(self, method: str, k: int, arrays: Mapping[str, np.ndarray], n: int,
                    meta: Optional[Mapping[str, Any]] = None) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(a) for name, a in arrays.items()}, n=np.asarray(n, dtype=np.int64))
        data = buf.getvalue()
        p = self.batch_path(method, k)
        # drop an old sidecar first: a kill between the two writes below then leaves the batch
        # "not cached" (recomputed on resume), never an old sidecar beside a new npz
        try:
            p.with_suffix(".json").unlink()
        except FileNotFoundError:
            pass
        atomic_write(p, data)
        side = {"sha256": sha256_bytes(data), "n": int(n), "k": int(k), "method": method,
                "fingerprint": self.fingerprint, **(dict(meta) if meta else {})}
        atomic_write(p.with_suffix(".json"), _json_bytes(side))
        return p

    def read_batch(self, method: str, k: int) -> Tuple[Dict[str, np.ndarray], int]:
        p = self.batch_path(method, k)
        if not self.has_batch(method, k):
            raise CacheError(f"no {METHOD_DIRS[method]} batch {k} in cache {self.fingerprint} (run clado prep {method})")
        side = _read_json(p.with_suffix(".json"), "batch sidecar")
        if not isinstance(side, dict):
            raise CacheError(f"batch sidecar {p.with_suffix('.json')} is not a JSON object")
        mine = {"fingerprint": self.fingerprint, "method": method, "k": k}
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
        n = int(arrays.pop("n"))
        if "n" in side and int(side["n"]) != n:
            raise CacheError(f"cache file {p} holds {n} samples but its sidecar says {side['n']}")
        return arrays, n

    def batches(self, method: str) -> List[int]:
        d = self.method_dir(method)
        if not d.is_dir():
            return []
        ks = []
        for f in d.iterdir():
            m = BATCH_RE.match(f.name)
            if m and f.with_suffix(".json").is_file():
                ks.append(int(m.group(1)))
        return sorted(ks)

    def batch_infos(self, method: str) -> List[BatchInfo]:
        out = []
        for k in self.batches(method):
            p = self.batch_path(method, k)
            side = _read_json(p.with_suffix(".json"), "batch sidecar")
            out.append(BatchInfo(method, k, int(side.get("n", 0)), p.stat().st_size, p))
        return out

    def combine(self, method: str, ks: Optional[Iterable[int]] = None) -> Tuple[Dict[str, np.ndarray], int, List[int]]:
        """Sample-weighted mean of every array over the batches ks (all cached by default)."""
        ks = sorted(set(ks)) if ks is not None else self.batches(method)
        if not ks:
            raise CacheError(f"no {METHOD_DIRS[method]} batches cached in {self.root} (run clado prep {method})")
        missing = [k for k in ks if not self.has_batch(method, k)]
        if missing:
            raise CacheError(f"{METHOD_DIRS[method]} batches {_ranges(missing)} are not cached in {self.fingerprint} "
                             f"(cached: {_ranges(self.batches(method)) or 'none'})")
        total: Dict[str, np.ndarray] = {}
        n_total = 0
        for k in ks:
            arrays, n = self.read_batch(method, k)
            for name, a in arrays.items():
                a = a.astype(np.float64)
                total[name] = total[name] + n * a if name in total else n * a
            n_total += n
        return {name: a / n_total for name, a in total.items()}, n_total, ks

    # -- claims (two processes on one cache never compute the same batch) -------------------
    @contextmanager
    def claim(self, method: str, k: int, wait: bool):
        """Yields True if this process holds the batch's lock (False if another does and
        wait is False)."""
        from filelock import FileLock, Timeout

        lock_path = self.method_dir(method) / f".batch_{k:05d}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

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

    # -- checking --------------------------------------------------------------------------
    def verify(self) -> List[str]:
        """Problems found (empty when every file checks out)."""
        problems = []
        try:
            Cache.from_dir(self.root)
        except CacheError as exc:
            problems.append(str(exc))
        for method in METHOD_DIRS:
            for k in self.batches(method):
                try:
                    self.read_batch(method, k)
                except CacheError as exc:
                    problems.append(str(exc))
        if (self.root / "quant_state.safetensors").exists():
            try:
                self.load_quant_state()
            except CacheError as exc:
                problems.append(str(exc))
        return problems

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


def _ranges(ks: List[int]) -> str:
    ks = sorted(ks)
    parts, i = [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        parts.append(f"{ks[i]}" if i == j else f"{ks[i]}..{ks[j]}")
        i = j + 1
    return ",".join(parts)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b or a[key] != b[key]:
                if key in a and key in b:
                    return _first_difference(a[key], b[key], f"{path}.{key}" if path else key)
                return f"{path + '.' if path else ''}{key} present on one side only"
    short = lambda v: (json.dumps(v)[:60] + "…") if len(json.dumps(v)) > 60 else json.dumps(v)
    return f"{path or 'value'} is {short(a)} in the cache, {short(b)} here"

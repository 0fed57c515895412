"""File helpers every writer shares: atomic writes that keep the user's umask, sha256, JSON
bytes and a JSON reader whose failures name the file."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Type

from ..errors import CacheError, CladoError, EnvironmentProblem


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over the target. A directory
    that cannot be written (permissions, a file in the way, a full or read-only disk) is an
    EnvironmentProblem; the target is then left as it was. The file gets the mode an ordinary
    `open()` would give it (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON (sorted keys) for files whose bytes are hashed or compared."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_json(path: Path, what: str, error: Type[CladoError] = CacheError) -> Any:
    from ..plaindata import load_json_text

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON (not UTF-8 text: {exc.reason})") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return load_json_text(text, f"{what} {path}", error)

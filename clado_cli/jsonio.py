"""JSON out: numpy scalars and arrays and paths become plain JSON; files are written atomically."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .store.files import atomic_write


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_default) + "\n"


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps(obj))
    sys.stdout.flush()


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), dumps(obj).encode())

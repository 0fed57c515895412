"""Where output goes: logs and progress on stderr, machine-readable results on stdout."""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

_quiet = False


def set_quiet(q: bool) -> None:
    global _quiet
    _quiet = q


def log(msg: str) -> None:
    if not _quiet:
        err.print(f"[dim]clado:[/dim] {msg}")


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {msg}")


def progress() -> Progress:
    """A Rich progress display on stderr (ETA per task). Disabled when quiet or when
    CLADO_NO_PROGRESS is set (tests, CI logs)."""
    disable = _quiet or bool(os.environ.get("CLADO_NO_PROGRESS"))
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=err, disable=disable, transient=False)

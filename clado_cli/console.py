"""Where output goes: logs and progress on stderr, machine-readable results on stdout."""
from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.text import Text
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

_quiet = False


def set_quiet(q: bool) -> None:
    global _quiet
    _quiet = q


def is_quiet() -> bool:
    return _quiet


def log(msg: str) -> None:
    """A log line on stderr; the message is literal text (a path like `a[/b]` prints as is)."""
    if not _quiet:
        err.print(Text.assemble(("clado:", "dim"), " ", str(msg)))


def warn(msg: str) -> None:
    """A warning on stderr (quiet silences it too: `-q` means nothing but errors)."""
    if not _quiet:
        err.print(Text.assemble(("warning:", "yellow"), " ", str(msg)))


def progress():
    """A Rich progress display on stderr (ETA per task). Disabled when quiet or when
    CLADO_NO_PROGRESS is set (tests, CI logs). When stderr is not a terminal (a log file, CI),
    Rich would draw only at the end: plain lines are written as the work goes instead."""
    disable = _quiet or bool(os.environ.get("CLADO_NO_PROGRESS"))
    if not disable and not err.is_terminal:
        return LineProgress()
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=err, disable=disable, transient=False)


class LineProgress:
    """The part of Rich's Progress that clado uses, as log lines: one when a task starts, then
    at most one every `every` seconds, and one when it completes."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.tasks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total=None, visible: bool = True, **_):
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "done": 0, "visible": visible,
                           "start": time.time(), "said": 0.0}
        return tid

    def reset(self, task, total=None, visible=None, description=None, **_):
        t = self.tasks[task]
        t.update(done=0, start=time.time(), said=0.0)
        if total is not None:
            t["total"] = total
        if visible is not None:
            t["visible"] = visible
        if description is not None:
            t["description"] = description

    def advance(self, task, advance: float = 1) -> None:
        t = self.tasks[task]
        t["done"] += advance
        now = time.time()
        finished = t["total"] is not None and t["done"] >= t["total"]
        if t["visible"] and (finished or now - t["said"] >= self.every):
            t["said"] = now
            total = f"/{t['total']:g}" if t["total"] is not None else ""
            log(f"{t['description']}: {t['done']:g}{total} ({now - t['start']:.0f} s)")

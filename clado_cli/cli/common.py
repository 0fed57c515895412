"""Pieces every command shares: the error boundary, config loading with flag overrides,
and JSON/table output."""
from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from ..console import err, set_quiet
from ..errors import CladoError
from ..jsonio import print_json, write_json  # noqa: F401  (re-exported for the commands)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/default.yaml).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda or auto.")
ThreadsOpt = typer.Option(None, "--threads", help="torch CPU threads.")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Root of the sensitivity caches.")
ModelOpt = typer.Option(None, "--model", help="Model: torchvision name, embedded, timm:NAME, hf:PATH, pkg.mod:fn or file.py:fn.")
WeightsOpt = typer.Option(None, "--weights", help="DEFAULT, none, or a state_dict file.")


# every data source's spec form; kept equal to clado_cli.data.DATASETS by a test (the data
# package imports torch, which `clado --help` should not wait for)
DATA_FORMS = ("digits", "idx:PATH", "imagefolder:PATH", "images:PATH", "synthetic:CxHxW")
DataOpt = typer.Option(None, "--data", help="Data set: " + ", ".join(DATA_FORMS) + ".")
BsOpt = typer.Option(None, "--bs", help="Batch size of the sensitivity batches.")
SeedOpt = typer.Option(None, "--seed", help="Seed of the training-split permutation.")
NormalizeOpt = typer.Option(None, "--normalize", help="File-backed data: mean_std or none (pixels in [0, 1] as they "
                                                       "are); default: the model's own preprocessing.")
InputSizeOpt = typer.Option(None, "--input-size", help="File-backed data: side of the square model input "
                                                        "(default: the model's own preprocessing).")
CostOpt = typer.Option(None, "--cost", help="A user cost table NAME=FILE (CSV with a header: layer,w_bits,value, "
                                              "optionally a_bits); repeatable, one per name.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No logs or progress on stderr.")


def error_line(message: str) -> None:
    """Print `Error: message` on stderr as exactly one line: the message is literal text (never
    parsed as Rich markup, so a path like `a[/b]` neither vanishes nor crashes the printer) and is
    never wrapped, whatever the terminal width."""
    from rich.text import Text

    text = " ".join(str(message).split())
    err.print(Text.assemble(("Error:", "red"), " ", text), soft_wrap=True, crop=False, overflow="ignore")


def boundary(fn):
    """Turn library errors into one `Error: ...` line and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CladoError as exc:
            error_line(exc.for_flags(flag_of))
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130)
        except RecursionError:
            error_line("input nested too deeply to read")
            raise typer.Exit(3)
        except ValueError as exc:
            if "null byte" not in str(exc):
                return _unexpected(exc)
            error_line("a path given holds a NUL character")
            raise typer.Exit(2)
        except Exception as exc:  # a bug or an unexpected library failure: still one line
            return _unexpected(exc)

    return wrapper


def _unexpected(exc: BaseException):
    if os.environ.get("CLADO_DEBUG"):
        traceback.print_exception(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        error_line(f"out of memory: {first or type(exc).__name__} (try a smaller --bs)")
        raise typer.Exit(5)
    error_line(f"{type(exc).__name__}: {first} (set CLADO_DEBUG=1 for the traceback)")
    raise typer.Exit(1)


# the flag behind a keyword of `load` or a library parameter named in an error message
# (CladoError.params) where it is not simply --name-with-dashes
FLAG_NAMES = {"hawq_estimator": "--estimator"}


def flag_of(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def load(config: Optional[Path], quiet: bool = False, **flags: Any):
    """The config from `config` with every flag that was given (not None) on top."""
    from ..config import load_config

    set_quiet(quiet)
    mapping = {
        "device": "device", "threads": "threads", "cache_dir": "cache_dir", "model": "model.name",
        "weights": "model.weights", "data": "data.dataset", "bs": "data.bs", "seed": "data.seed",
        "sb": "data.sb", "eb": "data.eb", "engine": "prep.engine", "loss": "prep.loss",
        "psd": "optimize.psd", "solver": "optimize.solver", "time_limit": "optimize.time_limit",
        "refine": "optimize.refine",
        "hawq_estimator": "prep.hawq_estimator", "stack": "prep.stack",
        "normalize": "data.transform.normalize", "input_size": "data.transform.input_size",
    }
    overrides: Dict[str, Any] = {}
    names: Dict[str, str] = {}
    for key, value in flags.items():
        if value is None:
            continue
        if key not in mapping:
            raise KeyError(key)
        overrides[mapping[key]] = value
        names[mapping[key]] = flag_of(key)
    return load_config(config, overrides, flags=names)


def session_for(cfg):
    from ..session import Session

    return Session(cfg)


def method_list(text: Optional[str], flag: str):
    """`a,b` -> ["a", "b"], each a registered method (an unknown one: a usage error naming the
    flag and the known methods); None stays None."""
    if text is None:
        return None
    from ..errors import UsageError
    from ..methods import METHODS, method_names

    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in METHODS:
            raise UsageError(f"{flag} {m!r}: one of {', '.join(method_names())}")
    if not names:
        raise UsageError(f"{flag}: name at least one method ({', '.join(method_names())})")
    return names

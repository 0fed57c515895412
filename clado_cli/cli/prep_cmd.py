from pathlib import Path
from typing import Optional

import typer

from ..console import out
from .common import (BsOpt, CacheDirOpt, ConfigOpt, DataOpt, DeviceOpt, InputSizeOpt, JsonOpt, ModelOpt, NormalizeOpt,
                     QuietOpt, SeedOpt, ThreadsOpt, WeightsOpt, boundary, load, print_json)

from ..methods import get_method, prep_method_names

app = typer.Typer(help=f"Compute sensitivities into the cache: {', '.join(prep_method_names())}.\n\n"
                       "Example: clado prep clado --sb 0 --eb 15", no_args_is_help=True)


def _shard(text: Optional[str]):
    from ..errors import UsageError

    if text is None:
        return None
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: use K/N, e.g. 0/4") from None
    if n <= 0 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def _stack(text: Optional[str]):
    """--stack: auto or a positive integer (the config validates the value)."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        from ..errors import UsageError

        raise UsageError(f"--stack {text!r}: use auto or a positive integer") from None


# the prep settings a method may read (Method.prep_flags) and their flags: given to a method
# that does not read it, a flag would be ignored silently, so it is refused
_FLAG_OF = {"engine": "--engine", "stack": "--stack", "estimator": "--estimator"}


def _readers(setting: str) -> str:
    return ", ".join(m for m in prep_method_names() if setting in get_method(m).prep_flags)


def _check_applies(method: str, given: dict) -> None:
    from ..errors import UsageError

    for setting, value in given.items():
        if value is not None and setting not in get_method(method).prep_flags:
            users = " and ".join(f"prep {m}" for m in prep_method_names() if setting in get_method(m).prep_flags)
            raise UsageError(f"{_FLAG_OF[setting]} does not apply to prep {method} (only to {users})")


def _run(method, config, sb, eb, bs, seed, force, dry_run, engine, shard, model, weights, data, device, threads,
         cache_dir, loss, as_json, quiet, hawq_estimator=None, stack=None, normalize=None, input_size=None):
    _check_applies(method, {"engine": engine, "stack": stack, "estimator": hawq_estimator})
    cfg = load(config, quiet, sb=sb, eb=eb, bs=bs, seed=seed, engine=engine, model=model, weights=weights,
               normalize=normalize, input_size=input_size,
               data=data, device=device, threads=threads, cache_dir=cache_dir, loss=loss,
               hawq_estimator=hawq_estimator, stack=_stack(stack))
    from ..distributed import maybe_distributed_prep

    summary = maybe_distributed_prep(cfg, method, cfg.data.sb, cfg.data.eb, force=force, dry_run=dry_run,
                                     shard=_shard(shard))
    if summary is None:  # not rank 0
        return
    if as_json:
        print_json(summary)
    elif summary.get("dry_run"):
        out.print(f"{method}: would compute batches {summary['to_compute'] or 'none'} "
                  f"(cached: {summary['already_cached'] or 'none'}); {len(summary['options'])} options per layer "
                  f"({', '.join(summary['options'])}); per batch {summary['per_batch']}; "
                  f"about {summary['estimated_seconds']} s and {summary['estimated_cache_bytes']:,} bytes of cache "
                  f"(probe: {summary['probe_seconds']} s)")
        if summary.get("suggestion"):
            out.print(f"suggestion: {summary['suggestion']}")
    else:
        mem = summary["memory"]
        peak = mem.get("cuda_peak_allocated_bytes", mem["process_peak_rss_bytes"])
        where = "GPU memory" if "cuda_peak_allocated_bytes" in mem else "memory (process peak)"
        out.print(f"{method}: computed {len(summary['computed'])} batch(es), skipped {len(summary['skipped'])} "
                  f"already cached, in {summary['seconds']:.1f} s, {where} {peak / 2**20:,.0f} MiB "
                  f"-> {summary['cache']}")


def _command(method: str, doc: str):
    def cmd(config: Optional[Path] = ConfigOpt,
            sb: Optional[int] = typer.Option(None, "--sb", help="First sensitivity batch."),
            eb: Optional[int] = typer.Option(None, "--eb", help="Last sensitivity batch (inclusive)."),
            bs: Optional[int] = BsOpt, seed: Optional[int] = SeedOpt,
            force: bool = typer.Option(False, "--force", help="Recompute batches already cached."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print the work and a time estimate (a timed probe of "
                                         "the real work on the first batch); cache nothing but the calibration."),
            engine: Optional[str] = typer.Option(None, "--engine", help=f"{_readers('engine')}: fast or reference (same numbers)."),
            shard: Optional[str] = typer.Option(None, "--shard", help="Compute only shard K/N of the batches."),
            model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
            normalize: Optional[str] = NormalizeOpt, input_size: Optional[int] = InputSizeOpt,
            device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt,
            cache_dir: Optional[str] = CacheDirOpt,
            loss: Optional[str] = typer.Option(None, "--loss", help="ce (labels) or kl (to the float model's output)."),
            hawq_estimator: Optional[str] = typer.Option(None, "--estimator", help=f"{_readers('estimator')}: per-layer or all-layers."),
            stack: Optional[str] = typer.Option(
                None, "--stack", help=f"{_readers('stack')}, fast engine: perturbations per forward pass, auto (per layer, peak "
                                      "memory within 2x of the reference engine's) or a number (more: faster, more "
                                      "memory)."),
            as_json: bool = JsonOpt, quiet: bool = QuietOpt):
        _run(method, config, sb, eb, bs, seed, force, dry_run, engine, shard, model, weights, data, device, threads,
             cache_dir, loss, as_json, quiet, hawq_estimator, stack, normalize, input_size)

    cmd.__doc__ = doc
    cmd.__name__ = f"prep_{method}"
    app.command(method)(boundary(cmd))


def add_method_command(name: str) -> None:
    """The `clado prep NAME` subcommand of one registered method."""
    m = get_method(name)
    _command(name, f"{m.help}\n\nExample: clado prep {name} --config configs/demo.yaml --sb 0 --eb 3")


for _name in prep_method_names():
    add_method_command(_name)

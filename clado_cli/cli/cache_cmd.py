from pathlib import Path
from typing import List

import typer
from rich.table import Table

from ..console import out
from .common import JsonOpt, QuietOpt, boundary, print_json

app = typer.Typer(help="Inspect, verify and merge sensitivity caches.\n\nExample: clado cache ls", no_args_is_help=True)


@app.command("ls")
@boundary
def ls(cache_dir: Path = typer.Option(Path(".clado-cache"), "--cache-dir", help="Root of the caches."),
       as_json: bool = JsonOpt):
    """Show every cache: fingerprint, model, data, methods, batches and sizes.

    Example: clado cache ls --cache-dir .clado-cache --json
    """
    from ..inspect_cache import cache_listing
    from ..store import ranges

    rows = cache_listing(cache_dir)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"no caches under {cache_dir}")
        return
    t = Table(title=f"caches under {cache_dir}")
    for col in ["fingerprint", "model", "data", "bs", "method", "batches", "samples", "bytes"]:
        t.add_column(col)
    for r in rows:
        if not r["methods"]:
            t.add_row(r["fingerprint"], str(r["model"]), str(r["data"]), str(r["bs"]), "-", "-", "-", "-")
        for method, info in r["methods"].items():
            t.add_row(r["fingerprint"], str(r["model"]), str(r["data"]), str(r["bs"]), method,
                      ranges(info["batches"]), str(info["samples"]), f"{info['bytes']:,}")
    out.print(t)


@app.command("verify")
@boundary
def verify(cache_dir: Path = typer.Option(Path(".clado-cache"), "--cache-dir", help="Root of the caches."),
           as_json: bool = JsonOpt):
    """Check every cache file against its checksum; exit 3 if any fails.

    Example: clado cache verify --cache-dir .clado-cache
    """
    from ..errors import CacheError, InputError
    from ..methods import content_check, stored_kinds
    from ..store import list_caches

    if not Path(cache_dir).is_dir():
        raise InputError(f"cache directory not found: {cache_dir}")
    report = []
    for c in list_caches(cache_dir):
        report.append({"fingerprint": c.fingerprint, "problems": c.verify(stored_kinds(), content_check(c)),
                       "stray_temp_files": [str(p) for p in c.stray_temp_files()]})
    bad = [r for r in report if r["problems"]]
    if as_json:
        print_json(report)
    else:
        for r in report:
            status = "ok" if not r["problems"] else f"{len(r['problems'])} problem(s)"
            out.print(f"{r['fingerprint']}: {status}")
            for p in r["problems"]:
                out.print(f"  - {p}")
    if bad:
        raise CacheError(f"{sum(len(r['problems']) for r in bad)} cache file(s) failed verification: "
                         f"{bad[0]['problems'][0]}")


@app.command("merge")
@boundary
def merge(sources: List[Path] = typer.Argument(..., help="Fingerprint directories (shard outputs) to merge."),
          into: Path = typer.Option(..., "--into", help="Cache root to merge into (a fingerprint dir is made there)."),
          as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Combine shard outputs into one cache, verifying manifests and checksums.

    Example: clado cache merge shard0/.clado-cache/3f2a... shard1/.clado-cache/3f2a... --into .clado-cache
    """
    from ..methods import content_check, stored_kinds
    from ..store import Cache, merge_caches

    report = merge_caches(sources, into, stored_kinds(), content_check(Cache.from_dir(sources[0])))
    if as_json:
        print_json(report)
    else:
        out.print(f"merged into {report['cache']}: " + "; ".join(
            f"{m}: {len(v['copied'])} copied, {len(v['present'])} already there, batches {v['batches']}"
            for m, v in report["methods"].items()))
        if report.get("missing"):
            out.print(f"still missing: {report['missing']}")

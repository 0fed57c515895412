from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..console import log, out
from . import app
from .common import (CacheDirOpt, ConfigOpt, DataOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, WeightsOpt,
                     boundary, load, print_json, session_for, write_json)


def open_cache(cache: Optional[Path], cfg):
    """The cache named by --cache (a fingerprint directory), or the one this config maps to."""
    from ..prep.cache import Cache

    if cache is not None:
        return Cache.from_dir(cache)
    s = session_for(cfg)
    return Cache.open(Path(cfg.cache_dir), s.manifest)


@app.command("optimize")
@boundary
def optimize(config: Optional[Path] = ConfigOpt,
             method: str = typer.Option("all", "--method", "-m", help="clado, mpqco, hawq, naive, all, or a comma list."),
             size_budget: Optional[str] = typer.Option(None, "--size-budget", help="Budget for the decided layers: 4MB, 4MiB, 800KB, bytes."),
             avg_bits: Optional[float] = typer.Option(None, "--avg-bits", help="Budget as average bits per decided weight."),
             budgets: Optional[str] = typer.Option(None, "--budgets", help="Sweep: 2MB:6MB:0.5MB, 2MB,3MB, avg:2:8:1."),
             psd: Optional[str] = typer.Option(None, "--psd", help="clip (the release) or shift (exact)."),
             solver: Optional[str] = typer.Option(None, "--solver", help="auto, gurobi, scip, highs, ..."),
             time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Seconds per solve (default 120)."),
             sb: Optional[int] = typer.Option(None, "--sb", help="First cached batch to use (default: all cached)."),
             eb: Optional[int] = typer.Option(None, "--eb", help="Last cached batch to use."),
             cache: Optional[Path] = typer.Option(None, "--cache", help="A fingerprint directory to read instead of the config's."),
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the decision JSON here (one method and budget)."),
             out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write one decision per method and budget, plus index.json."),
             model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
             device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt, cache_dir: Optional[str] = CacheDirOpt,
             as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Solve each method's program over the cached sensitivities for one or more size budgets.

    Example: clado optimize --config configs/demo.yaml --method all --avg-bits 4
    """
    from ..decide import METHODS, decide, space_of
    from ..errors import UsageError
    from ..optimize import format_bytes, parse_budget_list, resolve_budget, resolve_budget_spec

    cfg = load(config, quiet, model=model, weights=weights, data=data, device=device, threads=threads,
               cache_dir=cache_dir, psd=psd, solver=solver, time_limit=time_limit)
    methods = list(METHODS) if method == "all" else [m.strip() for m in method.split(",")]
    for m in methods:
        if m not in METHODS:
            raise UsageError(f"--method {m!r}: one of {', '.join(METHODS)} or all")
    given = sum(x is not None for x in (size_budget, avg_bits, budgets))
    if given != 1:
        raise UsageError("give exactly one of --size-budget, --avg-bits or --budgets")
    c = open_cache(cache, cfg)
    space = space_of(c.manifest)
    numel = sum(space.numel)
    if budgets is not None:
        resolved = [resolve_budget_spec(s, numel) for s in parse_budget_list(budgets)]
    else:
        resolved = [resolve_budget(size_budget, avg_bits, numel)]
    if (sb is None) != (eb is None):
        raise UsageError("give both --sb and --eb, or neither (all cached batches)")
    ks = list(range(sb, eb + 1)) if sb is not None else None
    if ks is not None and not ks:
        raise UsageError(f"--sb ({sb}) must not exceed --eb ({eb})")
    if output is not None and len(methods) * len(resolved) > 1:
        raise UsageError("--output takes one method and one budget; use --out-dir for several")
    for b in resolved:
        log(f"budget {b.given} = {b.bytes:,} bytes for the decided layers")
    decisions = decide(c, methods, resolved, cfg.optimize.psd, cfg.optimize.solver, cfg.optimize.time_limit,
                       ks=ks, config=cfg.to_dict())
    for d in decisions:
        for w in d["warnings"]:
            log(f"[yellow]{d['method']}: {w}[/yellow]")
        log(f"{d['method']} @ {d['budget']['given']}: solver {d['solver']['solver']} ({d['solver']['solver_note']}), "
            f"status {d['solver']['status']}, {d['solver']['seconds']:.2f} s")
    if output is not None:
        write_json(output, decisions[0])
    if out_dir is not None:
        index = []
        for d in decisions:
            name = f"{d['method']}-{d['budget']['given'].replace(':', '')}.json"
            write_json(out_dir / name, d)
            index.append({"file": name, "method": d["method"], "budget": d["budget"], "sizes": d["sizes"],
                          "predicted_loss_increase": d["predicted_loss_increase"], "optimal": d["solver"]["optimal"]})
        write_json(out_dir / "index.json", {"fingerprint": c.fingerprint, "decisions": index})
    if as_json:
        print_json(decisions[0] if len(decisions) == 1 else decisions)
        return
    t = Table(title=f"decisions ({c.fingerprint})")
    t.add_column("layer")
    t.add_column("params", justify="right")
    cols = [(d["method"], d["budget"]["given"]) for d in decisions]
    for m, b in cols:
        t.add_column(f"{m}\n{b}", justify="right")
    for l, name in enumerate(space.layer_names):
        cells = []
        for d in decisions:
            b = d["layers"][name]["w_bits"]
            cells.append(f"{b} ({format_bytes(space.numel[l] * b / 8)})")
        t.add_row(name, f"{space.numel[l]:,}", *cells)
    t.add_row("decided size", "", *[format_bytes(d["sizes"]["decided_bytes"]) for d in decisions])
    t.add_row("total size", "", *[format_bytes(d["sizes"]["total_bytes"]) for d in decisions])
    t.add_row("budget", "", *[format_bytes(d["budget"]["bytes"]) for d in decisions])
    t.add_row("pred. Δloss", "", *[f"{d['predicted_loss_increase']:.4g}" for d in decisions])
    t.add_row("optimal", "", *["yes" if d["solver"]["optimal"] else f"NO ({d['solver']['status']})" for d in decisions])
    out.print(t)

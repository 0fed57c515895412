from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..console import log, out, warn
from .common import (CacheDirOpt, ConfigOpt, DataOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, WeightsOpt,
                     boundary, load, method_list, print_json, session_for, write_json)
from ..methods import method_names


@boundary
def optimize(config: Optional[Path] = ConfigOpt,
             method: Optional[str] = typer.Option(
                 None, "--method", "-m",
                 help=f"{', '.join(method_names())}, all, or a comma list (default: every method whose "
                      f"sensitivities are cached)."),
             size_budget: Optional[str] = typer.Option(None, "--size-budget", help="Budget for the decided layers: 4MB, 4MiB, 800KB, bytes."),
             avg_bits: Optional[float] = typer.Option(None, "--avg-bits", help="Budget as average bits per decided weight."),
             budgets: Optional[str] = typer.Option(None, "--budgets", help="Sweep: 2MB:6MB:0.5MB, 2MB,3MB, avg:2:8:1."),
             psd: Optional[str] = typer.Option(None, "--psd", help="exact (default: x'Gx itself, proven by HiGHS where it can), clip (the release's eigenvalue clipping) or shift (exact, convex shift)."),
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
    from ..decide import batch_list, config_for_cache, decide, methods_to_solve, open_cache, resolve_budgets
    from ..decisions import write_decisions
    from ..errors import UsageError
    from ..methods import space_of

    cfg = load(config, quiet, model=model, weights=weights, data=data, device=device, threads=threads,
               cache_dir=cache_dir, psd=psd, solver=solver, time_limit=time_limit)
    wanted = method_names() if method == "all" else method_list(method, "--method")
    c = open_cache(cache, lambda: session_for(cfg))
    resolved = resolve_budgets(space_of(c.manifest), size_budget, avg_bits, budgets)
    ks = batch_list(sb, eb)
    methods = methods_to_solve(c, wanted)
    if wanted is None:
        log(f"methods with cached sensitivities: {', '.join(methods)}")
    if output is not None and len(methods) * len(resolved) > 1:
        raise UsageError("--output takes one method and one budget; use --out-dir for several")
    for b in resolved:
        log(f"budget {b.given} = {b.bytes:,} bytes for the decided layers")
    decisions = decide(c, methods, resolved, cfg.optimize.psd, cfg.optimize.solver, cfg.optimize.time_limit,
                       ks=ks, config=config_for_cache(cfg.to_dict(), c), threads=cfg.threads)
    for d in decisions:
        for w in d["warnings"]:
            warn(f"{d['method']}: {w}")
        log(f"{d['method']} @ {d['budget']['given']}: solver {d['solver']['solver']} ({d['solver']['solver_note']}), "
            f"status {d['solver']['status']}, {d['solver']['seconds']:.2f} s")
    if output is not None:
        write_json(output, decisions[0])
    if out_dir is not None:
        write_decisions(out_dir, decisions, c.fingerprint)
    if as_json:
        print_json(decisions[0] if len(decisions) == 1 else decisions)
        return
    if len(decisions) <= 3:
        out.print(decisions_table(decisions, space_of(c.manifest), f"decisions ({c.fingerprint})"))
    else:   # a column per decision is unreadable: one row each (the files hold the widths)
        out.print(decisions_summary(decisions, f"{len(decisions)} decisions ({c.fingerprint})"))


def decisions_summary(decisions, title: str) -> Table:
    from ..optimize import format_bytes

    t = Table(title=title)
    for col in ("method", "budget", "decided", "total", "pred. Δloss", "status", "seconds"):
        t.add_column(col, justify="left" if col in ("method", "budget", "status") else "right")
    for d in decisions:
        s = d["solver"]
        t.add_row(d["method"], d["budget"]["given"], format_bytes(d["sizes"]["decided_bytes"]),
                  format_bytes(d["sizes"]["total_bytes"]), f"{d['predicted_loss_increase']:.4g}",
                  "optimal" if s["optimal"] else str(s["status"]), f"{s['seconds']:.2f}")
    return t


def decisions_table(decisions, space, title: str) -> Table:
    from ..optimize import format_bytes

    t = Table(title=title)
    t.add_column("layer")
    t.add_column("params", justify="right")
    for d in decisions:
        t.add_column(f"{d['method']}\n{d['budget']['given']}", justify="right")
    for l, name in enumerate(space.layer_names):
        cells = []
        for d in decisions:
            b = d["layers"][name]["w_bits"]
            # with activation options: the decided pair, w4a8
            shown = f"w{b}a{d['layers'][name]['a_bits']}" if space.act_bits is not None else f"{b}"
            cells.append(f"{shown} ({format_bytes(space.numel[l] * b / 8)})")
        t.add_row(name, f"{space.numel[l]:,}", *cells)
    t.add_row("decided size", "", *[format_bytes(d["sizes"]["decided_bytes"]) for d in decisions])
    t.add_row("total size", "", *[format_bytes(d["sizes"]["total_bytes"]) for d in decisions])
    t.add_row("budget", "", *[format_bytes(d["budget"]["bytes"]) for d in decisions])
    t.add_row("pred. Δloss", "", *[f"{d['predicted_loss_increase']:.4g}" for d in decisions])
    t.add_row("optimal", "", *["yes" if d["solver"]["optimal"] else f"NO ({d['solver']['status']})" for d in decisions])
    return t

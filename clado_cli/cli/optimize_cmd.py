from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..console import log, out, warn
from .common import (CacheDirOpt, ConfigOpt, CostOpt, DataOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, WeightsOpt,
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
             budgets: Optional[str] = typer.Option(None, "--budgets", help="Sweep: 2MB:6MB:0.5MB, 2MB,3MB, avg:2:8:1, rel:0.2:0.8:0.2."),
             bops_budget: Optional[str] = typer.Option(None, "--bops-budget", help="Bound on the decided layers' BOPs (MACs x w x a): 1.5G, rel:0.5, or a sweep 1G:3G:0.5G."),
             budget: Optional[List[str]] = typer.Option(None, "--budget", help="Bound on any cost, NAME=VALUE (latency=3.2, bops=rel:0.5); repeatable; one cost may be a sweep."),
             cost: Optional[List[str]] = CostOpt,
             psd: Optional[str] = typer.Option(None, "--psd", help="exact (default: x'Gx itself, proven by HiGHS where it can), clip (the release's eigenvalue clipping) or shift (exact, convex shift)."),
             solver: Optional[str] = typer.Option(None, "--solver", help="auto, gurobi, scip, highs, ..."),
             time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Seconds per solve (default 120)."),
             sb: Optional[int] = typer.Option(None, "--sb", help="First cached batch to use (default: all cached)."),
             eb: Optional[int] = typer.Option(None, "--eb", help="Last cached batch to use."),
             cache: Optional[Path] = typer.Option(None, "--cache", help="A fingerprint directory to read instead of the config's."),
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the decision JSON here (one method and budget)."),
             out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write one decision per method and budget, plus index.json."),
             refine: int = typer.Option(1, "--refine", help="Solve for the K best distinct decisions, measure each on the sensitivity batches, keep the lowest measured loss increase (needs the model: --config)."),
             sensitivities: Optional[Path] = typer.Option(
                 None, "--sensitivities", help="Solve on this CSV (method,layer,numel,bits,value; clado inspect --csv "
                                               "writes it) instead of a cache: no prep, no model."),
             pairs: Optional[Path] = typer.Option(
                 None, "--pairs", help="With --sensitivities: CLADO's pair terms as CSV "
                                       "(layer_a,bits_a,layer_b,bits_b,value; clado inspect --csv-pairs writes it)."),
             model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
             device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt, cache_dir: Optional[str] = CacheDirOpt,
             as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Solve each method's program over the cached sensitivities under size, BOPs and user-cost budgets.

    Example: clado optimize --config configs/demo.yaml --method all --avg-bits 4 --bops-budget rel:0.5

    Example: clado optimize --sensitivities sens.csv --pairs pairs.csv --method clado --avg-bits 4 -o d.json
    """
    from ..budgets import budget_line
    from ..decide import batch_list, config_for_cache, decide_alternatives, methods_to_solve, open_cache, resolve_plan
    from ..errors import UsageError
    from ..methods import space_of

    cfg = load(config, quiet, model=model, weights=weights, data=data, device=device, threads=threads,
               cache_dir=cache_dir, psd=psd, solver=solver, time_limit=time_limit)
    if not 1 <= refine <= 50:
        raise UsageError(f"--refine {refine}: give 1..50 (1: the program's optimum, no refinement)", params=("refine",))
    if refine > 1 and (sensitivities is not None or cache is not None):
        raise UsageError("--refine measures each decision on the model and its sensitivity batches: use it with the "
                         "config's cache, not --cache or --sensitivities", params=("refine",))
    if sensitivities is not None or pairs is not None:
        from .optimize_file import optimize_from_file

        if sensitivities is None:
            raise UsageError("--pairs goes with --sensitivities (the per-option values)")
        if cache is not None or sb is not None or eb is not None:
            raise UsageError("--cache, --sb and --eb choose cached numbers; --sensitivities replaces the cache")
        wanted = None if method in (None, "all") else method_list(method, "--method")
        decisions, space = optimize_from_file(cfg, sensitivities, pairs, wanted, size_budget, avg_bits, budgets,
                                              output, bops_budget, budget or [], cost or [])
        return report(decisions, space, sensitivities.name, None, output, out_dir, as_json)
    wanted = method_names() if method == "all" else method_list(method, "--method")
    c = open_cache(cache, lambda: session_for(cfg))
    plan = resolve_plan(c, cfg.layers, size_budget, avg_bits, budgets, bops_budget, budget or [], cost or [],
                        cfg.optimize.bounds, cfg.optimize.costs, shared_inputs=lambda: _shared_inputs(cfg, c))
    resolved = [b for b, _ in plan.points]
    ks = batch_list(sb, eb)
    methods = methods_to_solve(c, wanted)
    if wanted is None:
        log(f"methods with cached sensitivities: {', '.join(methods)}")
    if output is not None and len(methods) * len(resolved) > 1:
        raise UsageError("--output takes one method and one budget; use --out-dir for several")
    for b in resolved:
        log(budget_line(b))
    groups = decide_alternatives(c, methods, resolved, cfg.optimize.psd, cfg.optimize.solver, cfg.optimize.time_limit,
                                 ks=ks, config=config_for_cache(cfg.to_dict(), c), threads=cfg.threads, plan=plan,
                                 k_best=refine)
    if refine > 1:
        from ..refine import refine as refine_decisions

        decisions = refine_decisions(session_for(cfg), groups, refine)
        changed = sum(d["refine"]["changed"] for d in decisions)
        log(f"refine: {changed} of {len(decisions)} decision(s) kept another of the {refine} best than the program's optimum")
    else:
        decisions = [g[0] for g in groups]
    report(decisions, space_of(c.manifest), c.fingerprint, c.fingerprint, output, out_dir, as_json)


def report(decisions, space, title: str, fingerprint, output: Optional[Path], out_dir: Optional[Path],
           as_json: bool) -> None:
    """Warnings and solver lines on stderr; the decision files; JSON or a table on stdout."""
    from ..decisions import write_decisions

    for d in decisions:
        for w in d["warnings"]:
            warn(f"{d['method']}: {w}")
        log(f"{d['method']} @ {d['budget']['given']}: solver {d['solver']['solver']} ({d['solver']['solver_note']}), "
            f"status {d['solver']['status']}, {d['solver']['seconds']:.2f} s")
    if output is not None:
        write_json(output, decisions[0])
    if out_dir is not None:
        write_decisions(out_dir, decisions, fingerprint)
    if as_json:
        print_json(decisions[0] if len(decisions) == 1 else decisions)
        return
    if len(decisions) <= 3:
        out.print(decisions_table(decisions, space, f"decisions ({title})"))
    else:   # a column per decision is unreadable: one row each (the files hold the widths)
        out.print(decisions_summary(decisions, f"{len(decisions)} decisions ({title})"))


def _shared_inputs(cfg, cache):
    """The decided layers' shared-input groups, from the config's model (one forward pass)."""
    from ..quant.ties import shared_input_groups
    from ..methods import space_of

    s = session_for(cfg)
    return shared_input_groups(s.float_model, space_of(cache.manifest).layer_names, s.example_input)


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
    t.add_row("budget", "", *[format_bytes(d["budget"]["bytes"]) if d["budget"]["bytes"] is not None else "-" for d in decisions])
    names = list(dict.fromkeys(c["name"] for d in decisions for c in d.get("constraints", [])))
    for name in names:   # every budget: value of its bound, "binds" when it stops a better choice
        cells = []
        for d in decisions:
            c = next((c for c in d.get("constraints", []) if c["name"] == name), None)
            cells.append("-" if c is None else f"{c['value']:.4g}/{c['bound']:.4g}{' binds' if c['binding'] else ''}")
        t.add_row(f"{name} used/bound", "", *cells)
    if any((d.get("costs") or {}).get("bops") for d in decisions):
        t.add_row("BOPs (total)", "", *[f"{d['costs']['bops']['total']:.4g}" if d["costs"].get("bops") else "-" for d in decisions])
    t.add_row("pred. Δloss", "", *[f"{d['predicted_loss_increase']:.4g}" for d in decisions])
    t.add_row("optimal", "", *["yes" if d["solver"]["optimal"] else f"NO ({d['solver']['status']})" for d in decisions])
    return t

"""`clado run`: prep every requested method (reusing caches), optimize over a list of budgets,
evaluate every decision with the uniform baselines and float, write results.json and pareto.png."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .console import log, warn
from .errors import EnvironmentProblem, UsageError


def run_pipeline(session, out_dir: Path, budgets: Optional[Sequence[str]] = None,
                 methods: Optional[Sequence[str]] = None, uniform: Optional[Sequence[int]] = None,
                 export_dir: Optional[Path] = None, x: str = "size") -> Dict[str, Any]:
    from .decide import decide_alternatives, resolve_plan
    from .refine import refine as refine_decisions, summary as refine_summary
    from .decisions import decision_file_name, write_decisions
    from .evaluate import evaluate_decision, evaluate_uniform
    from .jsonio import write_json
    from .measure import measure_decisions
    from .stats import paired_comparisons
    from .methods import get_method
    from .plots import pareto_plot
    from .prep import run_prep

    cfg = session.cfg
    t0 = time.time()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EnvironmentProblem(f"output directory {out_dir} is a file")
    methods = list(methods or cfg.optimize.methods)
    for m in methods:
        get_method(m)  # an unknown name is a usage error before any work
    budget_specs = list(budgets or cfg.optimize.budgets)
    if not budget_specs and not cfg.optimize.bounds:
        raise UsageError("no budgets: set optimize.budgets (or optimize.bounds) in the config or pass budgets", params=("budgets",))
    # every bound is checked here, before any prep (decide.check_points)
    plan = resolve_plan(session.cache, cfg.layers, config_budgets=cfg.optimize.bounds, config_costs=cfg.optimize.costs,
                        shared_inputs=lambda: _shared_inputs(session), size_specs=budget_specs or None,
                        macs=session.layer_macs, act_elements=session.layer_act_elements)
    resolved = [b for b, _ in plan.points]
    preps = {}
    for source in dict.fromkeys(get_method(m).source for m in methods):
        log(f"prep {source}: batches {cfg.data.sb}..{cfg.data.eb}")
        preps[source] = run_prep(session, source, cfg.data.sb, cfg.data.eb)
    ks = list(range(cfg.data.sb, cfg.data.eb + 1))
    log(f"optimize {', '.join(methods)} for {len(resolved)} budget(s)")
    k_best = cfg.optimize.refine
    groups = decide_alternatives(session.cache, methods, resolved, cfg.optimize.psd, cfg.optimize.solver,
                                 cfg.optimize.time_limit, ks=ks, config=cfg.to_dict(), threads=cfg.threads, plan=plan,
                                 k_best=k_best)
    if k_best > 1:
        log(f"refine: measure up to {k_best} best distinct decisions per method and budget on the sensitivity batches")
        decisions = refine_decisions(session, groups, k_best)
    else:
        decisions = [g[0] for g in groups]
    rows: List[Dict[str, Any]] = []
    log("evaluate float and uniform baselines")
    rows += evaluate_uniform(session, uniform if uniform is not None else cfg.quant.weight_widths())
    log("measure each decision's loss increase (sensitivity and held-out batches)")
    for d, measured in zip(decisions, measure_decisions(session, decisions)):
        d["measured"] = measured
        d["warnings"] += measured["warnings"]
    write_decisions(out_dir / "decisions", decisions, session.fingerprint)
    for d in decisions:
        rows.append(evaluate_decision(session, d, where=decision_file_name(d)))
    comparisons = paired_comparisons(rows)
    splits = session.splits()
    if splits["sensitivity_calibration_overlap"] or splits["evaluation"] == "the training images":
        asked = f" (asked for by {', '.join(splits['overlap_requested'])})" if splits["overlap_requested"] else ""
        warn(f"overlapping splits{asked}: {splits['sensitivity_calibration_overlap']} sensitivity images are also "
             f"calibration images; evaluation on {splits['evaluation']} ({splits['sensitivity_evaluation_overlap']} "
             f"sensitivity and {splits['calibration_evaluation_overlap']} calibration images among them)")
    plot = pareto_plot(rows, out_dir / "pareto.png",
                       f"{cfg.model.name} on {cfg.data.dataset}: top-1 vs {x} ({len(ks)} sensitivity batch(es))", x=x)
    results = {"clado_version": __version__, "fingerprint": session.fingerprint, "config": cfg.to_dict(),
               "prep": preps, "splits": splits, "refine": refine_summary(decisions), "results": rows, "comparisons": comparisons, "plot": str(plot), "seconds": round(time.time() - t0, 2)}
    if export_dir is not None:   # every decision as ONNX (QDQ) and encodings (docs/export.md)
        from .export import export_all

        log(f"export {len(decisions)} decision(s) to {export_dir}")
        results["exports"] = export_all(session, decisions, export_dir)
    write_json(out_dir / "results.json", results)
    return results


def _shared_inputs(session):
    from .quant.ties import shared_input_groups

    return shared_input_groups(session.float_model, session.plan.decided_names, session.example_input)

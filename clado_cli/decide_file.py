"""Decisions from sensitivities in files (clado_cli/sensfile.py) instead of a cache: the same
programs and solvers, no model and no prep. The decision says where its numbers came from (the
files and their sha256) and names no cache, model or config."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import __version__
from .decisions import SCHEMA_ID, sizes_triple
from .errors import SolverError, UsageError
from .methods import SolveOptions, get_method, method_names
from .optimize import Budget, solver_threads


def file_methods(path, pairs: Optional[Path]) -> List[str]:
    """The methods a sensitivities file (and pairs file) can be solved for, in registry order:
    each method with rows in it, naive beside CLADO's rows, and clado only with pairs."""
    from .sensfile import methods_in_file

    present = methods_in_file(path)
    out = []
    for name in method_names():
        m = get_method(name)
        if m.source in present and (pairs is not None or not m.uses_psd):
            out.append(name)
    if not out:
        raise UsageError(f"sensitivities file {path} holds only CLADO rows: give pairs too, or method naive",
                         params=("pairs", "method"))
    return out


def decide_from_files(path, pairs: Optional[Path], methods: Sequence[str], budgets_of: Callable[[Any], Any],
                      opts: SolveOptions, a_bits: int, on_result=None):
    """(decisions, option space) for every method and budget point. `budgets_of(space)` gives the
    decide.Plan on the file's option space (each bound checked against its range there)."""
    from .sensfile import sensitivities_from_files, uses_pairs

    for name in methods:
        get_method(name)
    if pairs is not None and not any(uses_pairs(m) for m in methods):
        raise UsageError(f"pairs holds CLADO's pair terms, which {', '.join(methods)} do not read",
                         params=("pairs",))
    # each method reads the pairs file only if its program has pair terms
    loaded = [sensitivities_from_files(m, path, pairs if uses_pairs(m) else None) for m in methods]
    space = loaded[0][0].space
    for sens, _ in loaded[1:]:
        if (sens.space.layer_names, sens.space.candidates) != (space.layer_names, space.candidates):
            raise UsageError(f"sensitivities file {path}: methods {loaded[0][0].method} and {sens.method} give "
                             f"different layers or widths; solve them one at a time", params=("method",))
    plan = budgets_of(space)
    out = []
    for sens, prov in loaded:
        method = get_method(sens.method)
        for budget, cons in plan.points:
            with solver_threads(opts.threads):
                res, predicted = method.solve(sens, budget, replace(opts, constraints=cons))
            if not cons.admits(space, res.choice):
                raise SolverError(f"method {method.name} returned a choice that breaks the budgets, ties or widths it was given")
            d = file_decision(sens, budget, res, predicted, opts.psd, a_bits, prov)
            d["costs"]["decided"] = plan.costs.report(res.choice)
            d["constraints"] = getattr(res, "constraints", None) or []
            d.update(plan.record())
            out.append(d)
            if on_result:
                on_result(d)
    return out, space


def file_decision(sens, budget: Budget, res, predicted: float, psd: Optional[str], a_bits: int,
                  provenance: Dict[str, Any]) -> Dict[str, Any]:
    """The decision record of one solve on file-backed sensitivities: the decided layers only
    (the files know no fixed layers), activations at `a_bits`."""
    method = get_method(sens.method)
    bits = {name: int(b) for name, b in zip(sens.space.layer_names, res.bits)}
    warnings = sens.warnings()
    if not res.optimal:
        gap = f"true gap {res.gap_percent:.3g}%" if getattr(res, "gap_percent", None) is not None else "no bound"
        warnings.append(f"solver stopped with status {res.status} ({gap}): the decision is not proven optimal")
    return {
        "schema": SCHEMA_ID,
        "method": sens.method,
        "psd": psd if method.uses_psd else None,
        "budget": budget.to_dict(),
        "layers": {name: {"w_bits": b, "a_bits": a_bits} for name, b in bits.items()},
        "fixed_layers": {},
        "sizes": sizes_triple(sens.space.size_of(res.choice), 0.0),
        "costs": {"bops": None, "macs": None},
        "predicted_loss_increase": predicted,
        "solver": res.to_dict(),
        "warnings": warnings,
        "sensitivities": provenance,
        "cache": {"fingerprint": None, "batches": None, "samples": None},
        "model": {"name": None, "weights_sha256": None},
        "transform": None,
        "clado_version": __version__,
        "config": {},
    }

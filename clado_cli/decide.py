"""From cached sensitivities to decisions: build each method's program, solve it per budget,
and write the decision JSON (schema clado_cli/schemas/decision.schema.json)."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import __version__
from .errors import InputError, UsageError
from .optimize import (Budget, OptionSpace, check_budget, g_from_ltilde, solve_ilp, solve_iqp)
from .prep.cache import Cache

SCHEMA_ID = "clado.decision/1"
METHODS = ("clado", "mpqco", "hawq", "naive")
SOURCE = {"clado": "clado", "naive": "clado", "mpqco": "mpqco", "hawq": "hawq"}


def space_of(manifest: Dict[str, Any]) -> OptionSpace:
    decided = manifest["layers"]["decided"]
    return OptionSpace(layer_names=[n for n, _ in decided], candidates=list(manifest["candidates"]),
                       numel=[int(k) for _, k in decided])


def fixed_bytes_of(manifest: Dict[str, Any]) -> float:
    bits = manifest["layers"]["fixed_weight_bits"]
    return sum(k * bits / 8 for _, k in manifest["layers"]["fixed"])


class Sensitivities:
    """One method's combined numbers over a set of cached batches."""

    def __init__(self, cache: Cache, method: str, ks: Optional[Sequence[int]] = None, combined=None):
        """`combined`: `cache.combine(SOURCE[method], ks)` when the caller has it already."""
        from .prep.hawq import hawq_sensitivity

        self.method = method
        self.space = space_of(cache.manifest)
        vals, self.samples, self.batches = combined or cache.combine(SOURCE[method], ks)
        P = self.space.n_options
        if method in ("clado", "naive"):
            Lt = vals["Ltilde"]
            if Lt.shape != (P, P):
                raise InputError(f"Ltilde in cache {cache.fingerprint} has shape {Lt.shape}, expected {(P, P)}")
            self.Ltilde = Lt
            self.G = g_from_ltilde(Lt, self.space)
            self.singles = np.diag(Lt).copy()
        elif method == "mpqco":
            self.s = vals["s"].reshape(-1)
            self.singles = self.s
        else:
            numel = np.array(self.space.numel, dtype=np.float64)
            self.traces = vals["traces"]
            self.s = hawq_sensitivity(self.traces, vals["qerr_sq"], numel).reshape(-1)
            self.singles = self.s

    def warnings(self) -> List[str]:
        neg = int((self.singles < 0).sum())
        if not neg:
            return []
        what = "single-option loss deltas" if self.method in ("clado", "naive") else "sensitivities"
        return [f"{neg} of {len(self.singles)} {what} are negative: the estimate says quantizing those options "
                f"lowers the loss, so even an unbinding budget may not pick the widest widths"]


def solve(sens: Sensitivities, budget: Budget, psd: str = "clip", solver: str = "auto", time_limit: float = 120.0):
    check_budget(sens.space, budget.bytes)
    if sens.method == "clado":
        res = solve_iqp(sens.G, sens.space, budget.bytes, psd=psd, solver=solver, time_limit=time_limit)
        x = sens.space.one_hot(res.choice)
        predicted = float(x @ sens.G @ x) / 2
    elif sens.method == "naive":
        res = solve_ilp(np.diag(sens.G), sens.space, budget.bytes, solver=solver, time_limit=time_limit)
        predicted = float(sens.singles @ sens.space.one_hot(res.choice))
    else:
        res = solve_ilp(sens.s, sens.space, budget.bytes, solver=solver, time_limit=time_limit)
        predicted = float(sens.s @ sens.space.one_hot(res.choice))
    return res, predicted


def make_decision(cache: Cache, sens: Sensitivities, budget: Budget, res, predicted: float,
                  psd: Optional[str], config: Dict[str, Any]) -> Dict[str, Any]:
    m = cache.manifest
    a_bits = m["quant"]["activation_bits"]
    fw, fa = m["layers"]["fixed_weight_bits"], m["layers"]["fixed_activation_bits"]
    decided_bytes = float(sens.space.size_of(res.choice))
    fixed_bytes = fixed_bytes_of(m)
    warnings = sens.warnings()
    if not res.optimal:
        warnings.append(f"solver stopped with status {res.status} (gap {res.gap}): the decision is not proven optimal")
    return {
        "schema": SCHEMA_ID,
        "method": sens.method,
        "psd": psd if sens.method == "clado" else None,
        "budget": budget.to_dict(),
        "layers": {name: {"w_bits": int(b), "a_bits": a_bits} for name, b in zip(sens.space.layer_names, res.bits)},
        "fixed_layers": {name: {"w_bits": fw, "a_bits": fa} for name, _ in m["layers"]["fixed"]},
        "sizes": {"decided_bytes": decided_bytes, "fixed_bytes": fixed_bytes, "total_bytes": decided_bytes + fixed_bytes},
        "predicted_loss_increase": predicted,
        "solver": res.to_dict(),
        "warnings": warnings,
        "cache": {"fingerprint": cache.fingerprint, "batches": list(sens.batches), "samples": int(sens.samples)},
        "model": {"name": m["model"]["name"], "weights_sha256": m["model"]["weights_sha256"]},
        "clado_version": __version__,
        "config": config,
    }


def decide(cache: Cache, methods: Sequence[str], budgets: Sequence[Budget], psd: str = "clip",
           solver: str = "auto", time_limit: float = 120.0, ks: Optional[Sequence[int]] = None,
           config: Optional[Dict[str, Any]] = None, on_result=None) -> List[Dict[str, Any]]:
    """Every (method, budget) decision; each cached method's batches are read once (clado and
    naive share them)."""
    for method in methods:
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    space = space_of(cache.manifest)
    for b in budgets:
        check_budget(space, b.bytes)
    out = []
    loaded: Dict[str, Any] = {}
    for method in methods:
        src = SOURCE[method]
        if src not in loaded:
            loaded[src] = cache.combine(src, ks)
        sens = Sensitivities(cache, method, ks, combined=loaded[src])
        for budget in budgets:
            res, predicted = solve(sens, budget, psd, solver, time_limit)
            d = make_decision(cache, sens, budget, res, predicted, psd, config or {})
            out.append(d)
            if on_result:
                on_result(d)
    return out


def _schema() -> Dict[str, Any]:
    return json.loads(resources.files("clado_cli.schemas").joinpath("decision.schema.json").read_text())


def validate_decision(d: Any, where: str = "decision") -> Dict[str, Any]:
    import jsonschema

    try:
        jsonschema.validate(d, _schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise InputError(f"{where} is not a valid clado decision: {path}: {exc.message}") from None
    return d


def read_decision(path) -> Dict[str, Any]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"decision file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"decision file {p} is not valid JSON: {exc}") from None
    return validate_decision(d, str(p))

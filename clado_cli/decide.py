"""From cached sensitivities to decisions: each method's program solved per budget, and the
decision record (schema and files: clado_cli/decisions.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .batchrange import check_batch_range
from .decisions import SCHEMA_ID, bops_report, sizes_triple
from .budgets import CostModel, bound_list, budget_points, point_budget, size_specs_of
from .errors import InputError, SolverError, UsageError
from .methods import Sensitivities, SolveOptions, combine_checked, get_method, load_sensitivities, space_of
from .optimize import Budget, check_budget, parse_budget_list, resolve_budget, resolve_budget_spec, solver_threads
from .optimize.constraints import Constraints, CostRow, Reduction, size_row
from .store import Cache


def fixed_bytes_of(manifest: Dict[str, Any]) -> float:
    bits = manifest["layers"]["fixed_weight_bits"]
    return sum(k * bits / 8 for _, k in manifest["layers"]["fixed"])


def make_decision(cache: Cache, sens: Sensitivities, budget: Budget, res, predicted: float,
                  psd: Optional[str], config: Dict[str, Any],
                  macs: Optional[Dict[str, int]] = None, plan: Optional["Plan"] = None) -> Dict[str, Any]:
    """The decision record. `macs`: the layers' MAC counts (the cache's layer_costs.json), for
    the MACs and BOPs in `costs`; None when prep has not measured them. `plan`: the costs,
    ties and per-layer widths the program was solved under (every cost is reported)."""
    m = cache.manifest
    method = get_method(sens.method)
    fw, fa = m["layers"]["fixed_weight_bits"], m["layers"]["fixed_activation_bits"]
    bits = {name: int(b) for name, b in zip(sens.space.layer_names, res.bits)}
    # each layer's input width: its option's (quant.options) or the one activation width
    pairs = sens.space.pairs
    a_bits = {name: int(pairs[k][1] if pairs[k][1] is not None else m["quant"]["activation_bits"])
              for name, k in zip(sens.space.layer_names, res.choice)}
    fixed = [name for name, _ in m["layers"]["fixed"]]
    warnings = sens.warnings()
    if not res.optimal:
        gap = f"true gap {res.gap_percent:.3g}%" if getattr(res, "gap_percent", None) is not None else "no bound"
        warnings.append(f"solver stopped with status {res.status} ({gap}): the decision is not proven optimal")
    costs = bops_report(macs, bits, a_bits, fixed, fw, fa) if macs is not None else {"bops": None, "macs": None}
    extra: Dict[str, Any] = {}
    if plan is not None:
        costs["decided"] = plan.costs.report(res.choice)
        extra = plan.record()
    return {
        "schema": SCHEMA_ID,
        "method": sens.method,
        "psd": psd if method.uses_psd else None,
        "budget": budget.to_dict(),
        "layers": {name: {"w_bits": b, "a_bits": a_bits[name]} for name, b in bits.items()},
        "fixed_layers": {name: {"w_bits": fw, "a_bits": fa} for name in fixed},
        "sizes": sizes_triple(sens.space.size_of(res.choice), fixed_bytes_of(m)),
        "costs": costs,
        "constraints": getattr(res, "constraints", None) or [],
        **extra,
        "predicted_loss_increase": predicted,
        "solver": res.to_dict(),
        "warnings": warnings,
        "cache": {"fingerprint": cache.fingerprint, "batches": list(sens.batches), "samples": int(sens.samples)},
        "model": {"name": m["model"]["name"], "weights_sha256": m["model"]["weights_sha256"]},
        # the resolved preprocessing of file-backed data (None for digits and synthetic)
        "transform": m["data"].get("transform"),
        "clado_version": __version__,
        "config": config,
    }


def decide(cache: Cache, methods: Sequence[str], budgets: Sequence[Budget], psd: str = "exact",
           solver: str = "auto", time_limit: float = 120.0, ks: Optional[Sequence[int]] = None,
           config: Optional[Dict[str, Any]] = None, on_result=None,
           threads: Optional[int] = None, plan: Optional["Plan"] = None) -> List[Dict[str, Any]]:
    """Every (method, budget) decision; each cache directory's batches are read once (clado and
    naive share CLADO's). Every budget is checked for feasibility before anything is solved.
    `plan` (resolve_plan): the other costs' bounds per budget, ties and per-layer widths; its
    budgets replace `budgets`."""
    out = []
    for group in decide_alternatives(cache, methods, budgets, psd, solver, time_limit, ks, config, threads, plan, 1):
        out.append(group[0])
        if on_result:
            on_result(group[0])
    return out


EXCLUDED = "_exclude"  # name prefix of the no-good rows that rule out earlier choices


def decide_alternatives(cache: Cache, methods: Sequence[str], budgets: Sequence[Budget], psd: str = "exact",
                        solver: str = "auto", time_limit: float = 120.0, ks: Optional[Sequence[int]] = None,
                        config: Optional[Dict[str, Any]] = None, threads: Optional[int] = None,
                        plan: Optional["Plan"] = None, k_best: int = 1) -> List[List[Dict[str, Any]]]:
    """For every (method, budget): up to `k_best` distinct decisions, best predicted first — the
    program solved again with a no-good row (Σ_{i in S} x_i <= L − 1) for each earlier choice S
    (docs/methods.md, "Refinement by measured loss"). Fewer when the budgets admit fewer choices."""
    chosen = [get_method(m) for m in methods]
    space = space_of(cache.manifest)
    if plan is None:   # a plan's points were checked when it was made (plan_for_space)
        points = [(b, None) for b in budgets]
        check_points(space, points)
    else:
        points = plan.points
    opts = SolveOptions(psd=psd, solver=solver, time_limit=time_limit, threads=threads)
    out = []
    loaded: Dict[str, Any] = {}
    macs = cache.load_layer_costs()   # read (and checked) once for every decision
    for method in chosen:
        src = method.source
        if src not in loaded:
            loaded[src] = combine_checked(cache, get_method(src), ks)
        sens = load_sensitivities(cache, method, ks, combined=loaded[src])
        for budget, cons in points:
            group: List[Dict[str, Any]] = []
            base = cons if cons is not None else Constraints()
            for rank in range(k_best):
                cuts = [CostRow(f"{EXCLUDED}{r}", space.one_hot(_choice_of(space, d)), space.n_layers - 1)
                        for r, d in enumerate(group)]
                now = Constraints(base.rows + cuts, base.allowed, base.ties) if (cuts or cons is not None) else None
                try:
                    with solver_threads(opts.threads):
                        res, predicted = method.solve(sens, budget, replace(opts, constraints=now))
                except (UsageError, SolverError):
                    if rank == 0:
                        raise
                    break  # the budgets admit no further distinct choice (or none was found in time)
                if now is not None and not now.admits(space, res.choice):
                    raise SolverError(f"method {method.name} returned a choice that breaks the budgets, ties or widths "
                                      f"it was given; its solve() must pass SolveOptions.constraints to the solver")
                if hasattr(res, "constraints") and res.constraints:
                    res.constraints = [c for c in res.constraints if not c["name"].startswith(EXCLUDED)]
                group.append(make_decision(cache, sens, budget, res, predicted, psd, config or {}, macs, plan))
            out.append(group)
    return out


def _choice_of(space, decision: Dict[str, Any]) -> List[int]:
    """The candidate index per decided layer of a decision (weight widths; activation widths too
    when the space has them)."""
    pairs = space.pairs
    out = []
    for name in space.layer_names:
        v = decision["layers"][name]
        key = (v["w_bits"], v["a_bits"] if space.act_bits is not None else None)
        out.append(pairs.index(key))
    return out


def check_points(space, points: Sequence[Tuple[Budget, Optional[Constraints]]]) -> None:
    """Each budget point's bounds, each alone, within reach of the choices its ties and widths
    admit: a one-line UsageError naming the first that is not, with its feasible range."""
    for b, cons in points:
        if b.bytes is not None:
            check_budget(space, b.bytes)
        if cons is not None:
            Reduction(space, cons if b.bytes is None else cons.with_row(size_row(space, b.bytes, b.given))).check()


@dataclass
class Plan:
    """What the programs are solved under besides the one-hot rows: each budget point (its
    Budget and the constraints besides the size), the costs, the ties and per-layer widths."""

    points: List[Tuple[Budget, Constraints]]
    costs: CostModel
    ties: List[List[str]] = field(default_factory=list)
    allowed: Dict[str, List[int]] = field(default_factory=dict)  # restricted layers only
    tables: Dict[str, str] = field(default_factory=dict)  # user cost name -> file (sha256 in record)
    table_sha256: Dict[str, str] = field(default_factory=dict)

    def record(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.ties or self.allowed:
            out["restrictions"] = {"ties": self.ties, "widths": self.allowed}
        if self.tables:
            out["cost_tables"] = {n: {"file": self.tables[n], "sha256": self.table_sha256[n]} for n in self.tables}
        return out


def resolve_plan(cache: Cache, layers_cfg, size_budget: Optional[str] = None, avg_bits: Optional[float] = None,
                 budgets: Optional[str] = None, bops_budget: Optional[str] = None,
                 others: Sequence[str] = (), cost_files: Sequence[str] = (),
                 config_budgets: Optional[Dict[str, str]] = None, config_costs: Optional[Dict[str, str]] = None,
                 shared_inputs=None, size_specs: Optional[List[str]] = None,
                 macs: Optional[Dict[str, int]] = None, act_elements: Optional[Dict[str, int]] = None) -> Plan:
    """Budget points from the size options, --bops-budget, --budget NAME=VALUE (and the config's
    optimize.bounds, optimize.costs), with `layers_cfg`'s ties and widths. `shared_inputs`: a
    callable giving the decided layers' shared-input groups (needed for tie_shared_input);
    `size_specs`: the size bounds already as a list (instead of the three size options); `macs`:
    the layers' MACs when the cache has none yet (before prep)."""
    m = cache.manifest
    return plan_for_space(space_of(m), layers_cfg, size_budget, avg_bits, budgets, bops_budget, others, cost_files,
                          config_budgets, config_costs, shared_inputs, size_specs, cache.load_layer_costs() or macs,
                          cache.load_act_elements() or act_elements,
                          m["quant"].get("activation_bits", 8), [n for n, _ in m["layers"]["fixed"]])


def plan_for_space(space, layers_cfg, size_budget: Optional[str] = None, avg_bits: Optional[float] = None,
                   budgets: Optional[str] = None, bops_budget: Optional[str] = None,
                   others: Sequence[str] = (), cost_files: Sequence[str] = (),
                   config_budgets: Optional[Dict[str, str]] = None, config_costs: Optional[Dict[str, str]] = None,
                   shared_inputs=None, size_specs: Optional[List[str]] = None,
                   macs: Optional[Dict[str, int]] = None, act_elements: Optional[Dict[str, int]] = None,
                   a_bits: int = 8, fixed_names: Sequence[str] = ()) -> Plan:
    """resolve_plan on an option space (a cache's, or a sensitivities file's: no MACs there, so
    no bops)."""
    from .layer_constraints import allowed_mask, resolve_ties, resolve_widths, tie_widths
    from .usercosts import parse_cost_options, read_cost_table
    from .store.files import sha256_bytes

    names = space.layer_names
    shared = []
    if layers_cfg is not None and layers_cfg.tie_shared_input:
        if shared_inputs is None:
            raise UsageError("layers.tie_shared_input needs the model: give --config or --model with the cache")
        shared = shared_inputs()
    ties = resolve_ties(names, layers_cfg.tie if layers_cfg is not None else [], shared)
    widths = resolve_widths(names, space.candidates, layers_cfg.widths if layers_cfg is not None else {})
    allowed = tie_widths(names, widths, ties)
    mask = np.asarray(allowed_mask(allowed, space.candidates), dtype=bool).ravel()
    base = Constraints([], None if mask.all() else mask, ties)
    tables, files, shas = {}, {}, {}
    pairs = [(n, p) for n, p in (config_costs or {}).items()] + parse_cost_options(list(cost_files))
    for name, path in pairs:
        t = read_cost_table(path, name, names, space.candidates, a_bits=space.act_bits or a_bits,
                            fixed_names=list(fixed_names))
        tables[name], files[name], shas[name] = t.values, str(path), sha256_bytes(Path(path).read_bytes())
    costs = CostModel.build(space, macs, a_bits, tables, act_elements)
    bounds: Dict[str, List[str]] = {}
    for name, value in (config_budgets or {}).items():
        bounds[name] = bound_list(name, str(value))
    if bops_budget is not None:
        bounds["bops"] = bound_list("bops", bops_budget)
    for text in others:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise UsageError(f"budget {text!r}: give NAME=VALUE, e.g. latency=3.2 or bops=rel:0.5", params=("budget",))
        if name == "size":
            raise UsageError("the size is bounded with --size-budget (or --budgets, --avg-bits), not NAME=VALUE", params=("budget",))
        bounds[name] = bound_list(name, value)
    for name in bounds:
        if name not in costs.values and not (name == "act_peak" and costs.peak is not None):
            costs.row(name, "0", Reduction(space, base))  # the unknown-cost error, naming what exists
    if size_specs is None:
        size_specs = size_specs_of(size_budget, avg_bits, budgets)
    points = [point_budget(p, space, costs, base) for p in budget_points(size_specs, bounds)]
    check_points(space, points)   # before any log or solve
    restricted = {names[l]: a for l, a in enumerate(allowed) if a != sorted(set(space.candidates))}
    return Plan(points, costs, [[names[l] for l in g] for g in ties], restricted, files, shas)


def cached_methods(cache: Cache) -> List[str]:
    """The registered methods whose sensitivities this cache holds (naive with CLADO's)."""
    from .methods import method_names

    return [n for n in method_names() if cache.batches(get_method(get_method(n).source).stored)]


def open_cache(cache_path: Optional[Path], session_factory) -> Cache:
    """The cache at `cache_path` (a fingerprint directory), or the one a config maps to
    (`session_factory()` builds its session)."""
    if cache_path is not None:
        return Cache.from_dir(cache_path)
    s = session_factory()
    return Cache.open(Path(s.cfg.cache_dir), s.manifest)


def resolve_budgets(space, size_budget: Optional[str] = None, avg_bits: Optional[float] = None,
                    budgets: Optional[str] = None) -> List[Budget]:
    """Exactly one of a size, an average bit width, or a list/sweep, resolved to bytes."""
    given = sum(x is not None for x in (size_budget, avg_bits, budgets))
    if given != 1:
        raise UsageError("give exactly one of size_budget, avg_bits or budgets",
                         params=("size_budget", "avg_bits", "budgets"))
    numel = sum(space.numel)
    if budgets is not None:
        return [resolve_budget_spec(s, numel) for s in parse_budget_list(budgets)]
    return [resolve_budget(size_budget, avg_bits, numel)]


def batch_list(sb: Optional[int], eb: Optional[int]) -> Optional[range]:
    """sb..eb (a range: checked against the cache before it is ever listed); None for "every
    cached batch"."""
    if (sb is None) != (eb is None):
        raise UsageError("give both sb and eb, or neither (all cached batches)", params=("sb", "eb"))
    if sb is None:
        return None
    check_batch_range(sb, eb)
    return range(sb, eb + 1)


def methods_to_solve(cache: Cache, methods: Optional[Sequence[str]]) -> List[str]:
    """`methods`, or (None) every method whose sensitivities the cache holds."""
    if methods is not None:
        for m in methods:
            get_method(m)
        return list(methods)
    found = cached_methods(cache)
    if not found:
        from .methods import prep_method_names

        raise InputError(f"cache {cache.fingerprint} holds no sensitivities yet (run clado prep METHOD, "
                         f"METHOD one of {', '.join(prep_method_names())})")
    return found


def config_for_cache(cfg_dict: Dict[str, Any], cache: Cache) -> Dict[str, Any]:
    """The config a decision records: `cfg_dict` with every setting the cache's manifest fixes
    taken from the manifest (a cache opened by path may come from another config), and the
    cache's own directory as cache_dir."""
    m = cache.manifest
    out = json.loads(json.dumps(cfg_dict))
    out.setdefault("model", {}).update({k: m["model"][k] for k in ("name", "weights") if k in m.get("model", {})})
    out.setdefault("data", {}).update({k: v for k, v in m.get("data", {}).items() if k in out["data"]})
    if "quant" in m:
        out["quant"] = m["quant"]
    layers = m.get("layers", {})
    for k in ("fixed_weight_bits", "fixed_activation_bits"):
        if k in layers:
            out.setdefault("layers", {})[k] = layers[k]
    if "loss" in m:
        out.setdefault("prep", {})["loss"] = m["loss"]
    out["cache_dir"] = str(cache.root.parent)
    return out

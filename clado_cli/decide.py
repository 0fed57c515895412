"""From cached sensitivities to decisions: each method's program solved per budget, and the
decision record (schema and files: clado_cli/decisions.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .batchrange import check_batch_range
from .decisions import SCHEMA_ID, bops_report, sizes_triple
from .errors import InputError, UsageError
from .methods import Sensitivities, SolveOptions, combine_checked, get_method, load_sensitivities, space_of
from .optimize import Budget, check_budget, parse_budget_list, resolve_budget, resolve_budget_spec, solver_threads
from .store import Cache


def fixed_bytes_of(manifest: Dict[str, Any]) -> float:
    bits = manifest["layers"]["fixed_weight_bits"]
    return sum(k * bits / 8 for _, k in manifest["layers"]["fixed"])


def make_decision(cache: Cache, sens: Sensitivities, budget: Budget, res, predicted: float,
                  psd: Optional[str], config: Dict[str, Any],
                  macs: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """The decision record. `macs`: the layers' MAC counts (the cache's layer_costs.json), for
    the MACs and BOPs in `costs`; None when prep has not measured them."""
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
    return {
        "schema": SCHEMA_ID,
        "method": sens.method,
        "psd": psd if method.uses_psd else None,
        "budget": budget.to_dict(),
        "layers": {name: {"w_bits": b, "a_bits": a_bits[name]} for name, b in bits.items()},
        "fixed_layers": {name: {"w_bits": fw, "a_bits": fa} for name in fixed},
        "sizes": sizes_triple(sens.space.size_of(res.choice), fixed_bytes_of(m)),
        "costs": bops_report(macs, bits, a_bits, fixed, fw, fa) if macs is not None else {"bops": None, "macs": None},
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
           threads: Optional[int] = None) -> List[Dict[str, Any]]:
    """Every (method, budget) decision; each cache directory's batches are read once (clado and
    naive share CLADO's). Every budget is checked for feasibility before anything is solved."""
    chosen = [get_method(m) for m in methods]
    space = space_of(cache.manifest)
    for b in budgets:
        check_budget(space, b.bytes)
    opts = SolveOptions(psd=psd, solver=solver, time_limit=time_limit, threads=threads)
    out = []
    loaded: Dict[str, Any] = {}
    macs = cache.load_layer_costs()   # read (and checked) once for every decision
    for method in chosen:
        src = method.source
        if src not in loaded:
            loaded[src] = combine_checked(cache, get_method(src), ks)
        sens = load_sensitivities(cache, method, ks, combined=loaded[src])
        for budget in budgets:
            with solver_threads(opts.threads):
                res, predicted = method.solve(sens, budget, opts)
            d = make_decision(cache, sens, budget, res, predicted, psd, config or {}, macs)
            out.append(d)
            if on_result:
                on_result(d)
    return out


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

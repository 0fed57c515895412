"""Budgets on any cost, several at once (docs/methods.md, "Costs, budgets and ties").

Costs per option (decided layer l at candidate k): `size` (weight bits numel·w, shown in bytes),
`bops` (MACs·w·a, the MACs measured once per cache), `act_memory` (the sum over decided layers
of their input activation's bytes per sample, elements·a/8), `act_peak` (the largest of them: a
mask over the options, not a row) and any user table (`--cost NAME=FILE`).
A bound is absolute (`1.5G`, `3.2`; suffixes k, M, G, T for 10³..10¹²) or relative, `rel:F`:
smallest + F·(largest − smallest) over the choices the ties and per-layer widths admit
(HAWQ-V3's convention), resolved and echoed. Sizes keep their own forms (`4MB`, `avg:4.5`) and
take `rel:F` too. One cost may be a list or a sweep (`1G:3G:0.5G`, `rel:0.2:0.8:0.2`); the
others stay fixed. No torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import UsageError
from .optimize import Budget, parse_budget_list, resolve_budget_spec
from .optimize.budget import sweep_points
from .optimize.constraints import Constraints, CostRow, Reduction, size_row
from .optimize.problem import OptionSpace

REL_PREFIX = "rel:"
SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([kKMGT]?)\s*$")


def _decimal(text: str, what: str) -> Decimal:
    m = _NUMBER.match(text or "")
    if not m:
        raise UsageError(f"invalid {what} {text!r}: expected a number with an optional k, M, G or T (e.g. 1.5G), or rel:F")
    value = Decimal(m.group(1)) * SUFFIX[m.group(2)]
    if not value.is_finite() or abs(value.adjusted()) > 30:
        raise UsageError(f"invalid {what} {text!r}: out of range")
    return value


def _fraction(text: str, what: str) -> Decimal:
    try:
        f = Decimal(text.strip())
    except Exception:
        f = None
    if f is None or not f.is_finite() or not Decimal(0) <= f <= Decimal(1):
        raise UsageError(f"invalid {what} {REL_PREFIX}{text!r}: the fraction must lie in 0..1 (smallest..largest choice)")
    return f


def _text(d: Decimal) -> str:
    return format(d.normalize(), "f")


def bound_list(name: str, text: str) -> List[str]:
    """The bounds one option gives for cost `name`: a value, a comma list, or an inclusive
    start:stop:step sweep, each kept as text (`rel:` applies to every point)."""
    what = f"{name} budget"
    body = (text or "").strip()
    rel = body.lower().startswith(REL_PREFIX)
    if rel:
        body = body[len(REL_PREFIX):]
    if not body:
        raise UsageError(f"invalid {what} {text!r}: empty")
    parse = (lambda t: _fraction(t, what)) if rel else (lambda t: _decimal(t, what))
    if ":" in body and "," not in body:
        parts = body.split(":")
        if len(parts) != 3:
            raise UsageError(f"invalid {what} sweep {text!r}: expected start:stop:step")
        points = sweep_points(*(parse(p) for p in parts), text, what=what, positive_start=False)
    else:
        points = [parse(p) for p in body.split(",")]
    return [f"{REL_PREFIX}{_text(p)}" if rel else _text(p) for p in points]


@dataclass
class CostModel:
    """The per-option values of every cost the decisions can be bounded by or report."""

    space: OptionSpace
    values: Dict[str, np.ndarray] = field(default_factory=dict)  # name -> (options,)
    units: Dict[str, str] = field(default_factory=dict)
    scales: Dict[str, float] = field(default_factory=dict)

    peak: Optional[np.ndarray] = None  # per option: its input activation's bytes (act_peak)

    @classmethod
    def build(cls, space: OptionSpace, macs: Optional[Mapping[str, int]], a_bits: int,
              tables: Mapping[str, np.ndarray] = (), act_elements: Optional[Mapping[str, int]] = None) -> "CostModel":
        """`macs`: per decided layer (None when prep has not measured them: no `bops`);
        `a_bits`: the activation width of every option, when the space has none of its own;
        `tables`: name -> [decided layers x candidates] values; `act_elements`: input-activation
        elements per sample of each decided layer (None: no activation-memory costs)."""
        cm = cls(space)
        cm.values["size"] = size_row(space, 1).values
        cm.units["size"], cm.scales["size"] = "bytes", 8.0
        if macs is not None:
            acts = np.asarray(space.act_bits if space.act_bits is not None else [a_bits] * len(space.candidates), float)
            m = np.asarray([int(macs[n]) for n in space.layer_names], dtype=float)
            cm.values["bops"] = np.outer(m, np.asarray(space.candidates, float) * acts).ravel()
            cm.units["bops"], cm.scales["bops"] = "BOPs", 1.0
        if act_elements is not None:
            per_option = space.activation_bytes([int(act_elements[n]) for n in space.layer_names], a_bits)
            cm.values["act_memory"] = per_option * 8.0  # bits, so the sum is compared exactly
            cm.units["act_memory"], cm.scales["act_memory"] = "bytes", 8.0
            cm.peak = per_option
        for name, table in dict(tables).items():
            v = np.asarray(table, dtype=float)
            if v.shape != (space.n_layers, len(space.candidates)):
                raise UsageError(f"cost {name!r}: a table of shape {v.shape}, expected {space.n_layers} layers x {len(space.candidates)} widths")
            cm.values[name] = v.ravel()
            cm.units[name], cm.scales[name] = "", 1.0
        return cm

    def names(self) -> List[str]:
        return list(self.values) + (["act_peak"] if self.peak is not None else [])

    def peak_mask(self, given: str, red: Reduction) -> Tuple[np.ndarray, float]:
        """act_peak: the largest input activation of a decided layer, in bytes per sample, is not
        linear in x, but `max_l c_l <= C` holds exactly when no option with c_i > C is chosen, so
        it is a mask over the options. Relative bounds run from the smallest achievable peak (the
        largest over layers of each layer's smallest option) to the largest."""
        if self.peak is None:
            raise UsageError("act_peak needs the input-activation counts a prep run measures: run clado prep first")
        allowed = np.ones(len(self.peak), bool) if red.constraints.allowed is None else np.asarray(red.constraints.allowed, bool)
        B = len(self.space.candidates)
        per_layer = [self.peak[l * B:(l + 1) * B][allowed[l * B:(l + 1) * B]] for l in range(self.space.n_layers)]
        lo, hi = max(float(p.min()) for p in per_layer), max(float(p.max()) for p in per_layer)
        if given.lower().startswith(REL_PREFIX):
            bound = float(np.floor(lo + float(_fraction(given[len(REL_PREFIX):], "act_peak budget")) * (hi - lo) + 1e-9))
        else:
            bound = float(_decimal(given, "act_peak budget"))
        if bound < lo:
            raise UsageError(f"act_peak budget {bound:.0f} bytes is below the smallest possible act_peak {lo:.0f} bytes "
                             f"(some layer's narrowest input); feasible range: {lo:.0f} bytes..{hi:.0f} bytes")
        return self.peak <= bound + 1e-9, bound

    def row(self, name: str, given: str, red: Reduction) -> CostRow:
        """The cost row for a bound as given, resolved against the admitted choices' range."""
        if name not in self.values:
            known = ", ".join(self.values)
            hint = " (bops needs the MACs a prep run measures: run clado prep first)" if name == "bops" else ""
            raise UsageError(f"unknown cost {name!r}{hint}; costs here: {known} (add one with --cost NAME=FILE)")
        values, scale = self.values[name], self.scales[name]
        lo, hi = _range(red, values)
        if given.lower().startswith(REL_PREFIX):
            f = float(_fraction(given[len(REL_PREFIX):], f"{name} budget"))
            bound = lo + f * (hi - lo)
            if name == "size":  # whole bytes, rounded down (never above the fraction asked)
                bound = 8.0 * np.floor(bound / 8.0 + 1e-9)
            elif name == "bops":
                bound = float(np.floor(bound + 1e-9))
        else:
            bound = float(_decimal(given, f"{name} budget")) * scale
        return CostRow(name, values, bound, unit=self.units[name], scale=scale, given=given)

    def report(self, choice: Sequence[int]) -> Dict[str, float]:
        """Every cost of a choice (decided layers), in shown units."""
        x = self.space.one_hot(choice)
        out = {n: float(v @ x) / self.scales[n] for n, v in self.values.items()}
        if self.peak is not None:
            out["act_peak"] = float(np.max(self.peak[x.astype(bool)]))
        return out


def _range(red: Reduction, values: np.ndarray) -> Tuple[float, float]:
    """Smallest and largest total of `values` over the choices the mask and ties admit."""
    probe = Reduction(red.space, Constraints([CostRow("probe", values, 0.0)], red.constraints.allowed, red.constraints.ties))
    return probe.ranges()[0]


def budget_points(size_specs: Optional[List[str]], bounds: Mapping[str, List[str]]) -> List[Dict[str, str]]:
    """The budget points to solve: at most one cost (the size included) may have several values;
    every point has every other cost at its one value. Each point maps cost name -> bound as given."""
    lists = {**({"size": list(size_specs)} if size_specs else {}), **{k: list(v) for k, v in bounds.items()}}
    if not lists:
        raise UsageError("give a budget: a size (--size-budget/--budgets/--avg-bits), --bops-budget or --budget NAME=VALUE",
                         params=("size_budget", "avg_bits", "budgets"))
    many = [k for k, v in lists.items() if len(v) > 1]
    if len(many) > 1:
        raise UsageError(f"only one cost can be swept at a time (the others fixed); got several values for {', '.join(many)}")
    swept = many[0] if many else next(iter(lists))
    return [{**{k: v[0] for k, v in lists.items()}, swept: value} for value in lists[swept]]


def point_budget(point: Mapping[str, str], space: OptionSpace, cm: CostModel, base: Constraints) -> Tuple[Budget, Constraints]:
    """The Budget a decision records (size in bytes when bounded, the other bounds, a label) and
    the constraints to solve under besides the size (the solvers add the size row from
    Budget.bytes), every bound resolved."""
    red = Reduction(space, base)
    rows: List[CostRow] = []
    size: Optional[Budget] = None
    if "size" in point:
        given = point["size"]
        if given.lower().startswith(REL_PREFIX):
            row = cm.row("size", given, red)
            size = Budget(given=given, bytes=int(row.bound // 8))
        else:
            size = resolve_budget_spec(given, sum(space.numel))
    bounds = []
    allowed = base.allowed
    for name, given in point.items():
        if name == "size":
            continue
        if name == "act_peak":  # a mask, not a row
            mask, bound = cm.peak_mask(given, red)
            allowed = mask if allowed is None else (np.asarray(allowed, bool) & mask)
            bounds.append({"name": name, "given": given, "bound": bound, "unit": "bytes"})
            continue
        row = cm.row(name, given, red)
        rows.append(row)
        bounds.append({"name": name, "given": given, "bound": row.bound / row.scale, "unit": row.unit})
    parts = ([size.given] if size else []) + [f"{b['name']}={b['given']}" for b in bounds]
    budget = Budget(given="+".join(parts), bytes=size.bytes if size else None, bounds=tuple(bounds))
    return budget, Constraints(rows, allowed, base.ties)


def budget_line(budget: Budget) -> str:
    """How a resolved budget is echoed: `budget avg:4+bops=rel:0.3 = 49,664 bytes for the decided
    layers; bops <= 4.0842e+07 BOPs`."""
    parts = ([f"{budget.bytes:,} bytes for the decided layers"] if budget.bytes is not None else []) + \
            [f"{x['name']} <= {x['bound']:.6g} {x['unit']}".rstrip() for x in budget.bounds]
    return f"budget {budget.given} = {'; '.join(parts)}"


def size_specs_of(size_budget: Optional[str], avg_bits: Optional[float], budgets: Optional[str]) -> Optional[List[str]]:
    """The size bounds as given: one of a size, an average width or a list/sweep (or none)."""
    given = [x for x in (size_budget, avg_bits, budgets) if x is not None]
    if len(given) > 1:
        raise UsageError("give at most one of size_budget, avg_bits or budgets", params=("size_budget", "avg_bits", "budgets"))
    if budgets is not None:
        return bound_list("size", budgets) if budgets.strip().lower().startswith(REL_PREFIX) else parse_budget_list(budgets)
    if avg_bits is not None:
        return [f"avg:{avg_bits}"]
    if size_budget is not None:
        return [size_budget] if size_budget.strip().lower().startswith(REL_PREFIX) else parse_budget_list(size_budget)
    return None

"""Prove the one-hot quadratic program optimal with HiGHS (highspy, called directly).

1. The root: the LP relaxation of the linearization (linearize.py, with the budget RLT rows),
   solved by interior point without crossover. Its bound is computed from the row multipliers
   as a Lagrangian bound (valid for any multipliers, so an inexact solve still gives a true
   bound; an interrupted interior point returns none).
2. Reduced-cost fixing by probing (probe_fixing): an option is removed when every choice that
   uses it is worse than the incumbent by the reduced costs of the option, of the other options
   of its layer and of its pairs with every other layer; rounds repeat with the removed options'
   columns at 0. Layers left with one option are folded into the constants. On the measured
   instances this removes about half of the options (the options' own reduced costs alone removed
   almost none).
3. The MIP of what is left, by HiGHS, started from the incumbent, until the time limit.
The bound reported is max(root bound, min(MIP bound, bound of the removed options)); every value
is x'Qx itself (no shift, no clipping). That is formulation "root+pair+budget-rlt", the default
(measured fastest to a proof on 9 of 10 measured-G instances from 12x3 to 100x3 and within 4% on
the tenth, docs/solvers.md).
"pair" and "pair+budget-rlt" hand the whole program to HiGHS's MIP from the incumbent.
"root-lazy+pair+budget-rlt" solves the root with the budget RLT rows separated lazily
(_lazy_root; every round's bound is the full model's Lagrangian bound) and hands the MIP only
the rows it separated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .heuristic import OneHotProgram
from .linearize import LinearModel, build, lagrangian_bound, pairs


@dataclass
class ExactOutcome:
    opts: Optional[np.ndarray]  # option index per layer of the best choice found; None when none was
    value: float
    bound: Optional[float]
    root_bound: Optional[float]
    proven: bool
    notes: List[str] = field(default_factory=list)
    infeasible: bool = False  # HiGHS proved that no choice meets every row


def _highs(model: LinearModel, integer: bool, options: dict):
    import highspy

    h = highspy.Highs()
    h.silent()
    lp = highspy.HighsLp()
    lp.num_col_ = model.n_cols
    lp.num_row_ = model.A.shape[0]
    inf = highspy.kHighsInf
    lp.col_cost_ = model.c
    lp.col_lower_ = model.col_lower
    lp.col_upper_ = model.col_upper
    lp.row_lower_ = np.where(np.isfinite(model.row_lower), model.row_lower, -inf)
    lp.row_upper_ = np.where(np.isfinite(model.row_upper), model.row_upper, inf)
    lp.offset_ = model.offset
    A = model.A.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * model.n_x + [highspy.HighsVarType.kContinuous] * (model.n_cols - model.n_x)
    h.passModel(lp)
    from .backends import highs_pool, threads

    highs_pool()
    for key, value in {**options, **({"threads": threads()} if threads() else {})}.items():
        h.setOptionValue(key, value)
    return h



def restrict(prog: OneHotProgram, keep: np.ndarray) -> Tuple[OneHotProgram, np.ndarray, np.ndarray]:
    """The program over the options `keep` (a mask; at least one per layer), with layers left
    with a single option folded into the diagonal, the offset and the bounds. Returns it and
    the original indices of its options and of the folded ones."""
    keep = np.asarray(keep, dtype=bool)
    counts = np.bincount(prog.layer[keep], minlength=prog.n_layers)
    fixed_layers = counts == 1
    fixed = np.nonzero(keep & fixed_layers[prog.layer])[0]
    free = np.nonzero(keep & ~fixed_layers[prog.layer])[0]
    Q = prog.Q
    sub = Q[np.ix_(free, free)].copy()
    sub[np.diag_indices_from(sub)] += 2.0 * Q[np.ix_(free, fixed)].sum(axis=1)
    offset = prog.offset + float(Q[np.ix_(fixed, fixed)].sum())
    _, layer = np.unique(prog.layer[free], return_inverse=True)
    caps = prog.caps - prog.costs[:, fixed].sum(axis=1)
    reduced = OneHotProgram(sub, layer, prog.costs[:, free], caps, offset=offset)
    return reduced, free, fixed


FORMULATIONS = {
    # name: (budget RLT rows, root LP and reduced-cost fixing before the MIP: False, "ipm" (all rows by interior
    # point) or "lazy" (budget RLT rows separated by dual simplex; the MIP gets only the ones separated))
    "pair": (False, False),
    "pair+budget-rlt": (True, False),
    "root+pair+budget-rlt": (True, "ipm"),
    "root-lazy+pair+budget-rlt": (True, "lazy"),
}
DEFAULT_FORMULATION = "root+pair+budget-rlt"  # measured fastest to a proof, docs/solvers.md


def _mip(prog: OneHotProgram, opts: Optional[np.ndarray], deadline: float, rel_gap: float, abs_gap: float, budget_rlt: bool,
         mip_lp_solver: Optional[str], rlt_options: Optional[np.ndarray] = None):
    """HiGHS's MIP of prog from the choice opts (None: no start): (best choice or None, its dual
    bound, a note, whether it proved the program infeasible). rlt_options: the options whose
    budget RLT rows it gets (default all, with budget_rlt)."""
    import highspy

    model = build(prog, budget_rlt=budget_rlt, rlt_options=rlt_options)
    if mip_lp_solver is None:
        mip_lp_solver = "ipm" if model.n_cols >= IPM_COLUMNS else "choose"
    t = time.perf_counter()
    h = _highs(model, integer=True, options={"time_limit": max(deadline - t, 0.01), "mip_rel_gap": rel_gap,
                                              "mip_abs_gap": abs_gap, "mip_lp_solver": mip_lp_solver})
    if opts is not None:
        warm = highspy.HighsSolution()
        warm.col_value = list(model.point(opts))
        warm.value_valid = True
        h.setSolution(warm)
    h.run()
    info = h.getInfo()
    status = h.modelStatusToString(h.getModelStatus()).lower()
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
    sol = h.getSolution()
    choice = None
    if sol.value_valid:
        x = np.asarray(sol.col_value)[: model.n_x]
        choice = np.array([prog.starts[l] + int(np.argmax(x[prog.starts[l]:prog.starts[l + 1]])) for l in range(prog.n_layers)])
    rows = "one-hot RLT rows" if not budget_rlt else "one-hot and budget RLT rows" if rlt_options is None else \
        f"one-hot RLT rows and the budget RLT rows of {len(rlt_options)} options"
    note = (f"HiGHS MIP (pair linearization with {rows}: "
            f"{model.A.shape[0]} rows x {model.n_cols} columns, {model.n_x} binaries, LPs by {mip_lp_solver}) {status} in {time.perf_counter() - t:.1f} s, "
            f"{int(info.mip_node_count)} nodes")
    return choice, bound, note, status == "infeasible"


IPM_COLUMNS = 10_000  # HiGHS's MIP solves its LPs by interior point from this many columns up:
# measured 24 s vs 41 s (64x3, one instance) and 20 s vs 50 s (64x3, another) to the proof, both
# at the root node; below it simplex and interior point tie (docs/solvers.md)


def solve(prog: OneHotProgram, incumbent: np.ndarray, deadline: float, rel_gap: float, abs_gap: float,
          formulation: str = DEFAULT_FORMULATION, mip_lp_solver: Optional[str] = None) -> ExactOutcome:
    budget_rlt, root_lp = FORMULATIONS[formulation]
    notes: List[str] = []
    if incumbent is None:  # no start: HiGHS's MIP searches for a feasible choice itself
        choice, bound, note, infeasible = _mip(prog, None, deadline, rel_gap, abs_gap, budget_rlt, mip_lp_solver)
        notes.append(note)
        if choice is None or not prog.fits(choice):
            return ExactOutcome(None, np.inf, None, None, False, notes, infeasible=infeasible)
        value = prog.value(choice)
        bound = None if bound is None else min(bound, value)
        return ExactOutcome(choice, value, bound, None, bound is not None and value - bound <= max(abs_gap, rel_gap * abs(value)), notes)
    opts = np.asarray(incumbent)
    value = prog.value(opts)

    def tol(v: float) -> float:
        return max(abs_gap, rel_gap * abs(v))

    def remaining() -> float:
        return deadline - time.perf_counter()

    if not root_lp:
        choice, bound, note, _ = _mip(prog, opts, deadline, rel_gap, abs_gap, budget_rlt, mip_lp_solver)
        notes.append(note)
        if choice is not None and prog.fits(choice) and prog.value(choice) < value:
            opts, value = choice, prog.value(choice)
        bound = None if bound is None else min(bound, value)
        return ExactOutcome(opts, value, bound, None, bound is not None and value - bound <= tol(value), notes)

    pre = root_fixing(prog, opts, deadline, tol(value), formulation)
    notes += pre.notes
    if pre.root is None or pre.proven:
        return ExactOutcome(opts, value, pre.bound, pre.root, pre.proven, notes)
    root, keep, excluded_bound, rlt_options = pre.root, pre.keep, pre.excluded_bound, pre.rlt_options
    reduced, free, fixed = restrict(prog, keep)
    if reduced.n_layers == 0 or remaining() <= 0:
        return ExactOutcome(opts, value, pre.bound, root, False, notes)
    position = np.full(len(keep), -1)
    position[free] = np.arange(len(free))
    sub_opts = position[opts[np.isin(opts, free)]]
    sub_rlt = None if rlt_options is None else position[np.asarray(rlt_options, dtype=np.int64)]
    sub_rlt = None if sub_rlt is None else sub_rlt[sub_rlt >= 0]
    choice, sub_bound, note, _ = _mip(reduced, sub_opts, deadline, rel_gap, abs_gap, budget_rlt, mip_lp_solver, sub_rlt)
    notes.append(note)
    if choice is not None:
        cand = opts.copy()
        cand[prog.layer[free[choice]]] = free[choice]
        if prog.fits(cand) and prog.value(cand) < value:
            opts, value = cand, prog.value(cand)
    bound = max(root, min(-np.inf if sub_bound is None else sub_bound, excluded_bound))
    bound = min(bound, value)  # equal to the solver's tolerance
    return ExactOutcome(opts, value, bound, root, value - bound <= tol(value), notes)


@dataclass
class RootFixing:
    """The root LP's bound and the options probing left (root_fixing)."""

    root: Optional[float]  # None: the root LP did not finish
    keep: Optional[np.ndarray]  # bool per option: may be in a choice better than the incumbent
    excluded_bound: float  # every choice using a removed option is worth at least this
    rlt_options: Optional[np.ndarray]  # options whose budget RLT rows the MIP should get (None: all)
    notes: List[str]
    bound: Optional[float] = None  # what this much proves: the root, or min(incumbent, removed) when no layer is open
    proven: bool = False  # the incumbent is optimal already


def root_fixing(prog: OneHotProgram, opts: np.ndarray, deadline: float, tol: float,
                formulation: str = DEFAULT_FORMULATION) -> RootFixing:
    """Steps 1 and 2 of the module text for a root formulation: the root LP (all rows by interior
    point, or lazily), then reduced-cost fixing by probing against the incumbent opts. Any MIP
    solver can finish the job on restrict(prog, keep): HiGHS here, SCIP or Gurobi in solvers.py."""
    budget_rlt, root_lp = FORMULATIONS[formulation]
    value = prog.value(opts)
    if root_lp == "lazy":
        root, d, rlt_options, notes = _lazy_root(prog, value, tol, deadline, seed=opts if LAZY_SEED else None)
    else:
        root, d, notes = _ipm_root(prog, budget_rlt, deadline - time.perf_counter())
        rlt_options = None
    if root is None:
        return RootFixing(None, None, np.inf, rlt_options, notes)
    if value - root <= tol:
        return RootFixing(root, np.ones(len(prog.layer), bool), np.inf, rlt_options, notes, min(root, value), True)
    keep, excluded_bound, rounds = probe_fixing(prog, d, root, value, opts)
    open_layers = int((np.bincount(prog.layer[keep], minlength=prog.n_layers) > 1).sum())
    notes = notes + [f"reduced-cost fixing (probing each option's pairs, {rounds} rounds) kept {keep.sum()} of {len(keep)} "
                     f"options ({open_layers} of {prog.n_layers} layers still open)"]
    bound, proven = root, False
    if open_layers == 0:  # only the incumbent is left
        bound = max(root, min(value, excluded_bound))
        proven = value - bound <= tol
    return RootFixing(root, keep, excluded_bound, rlt_options, notes, min(bound, value), proven)


def probe_fixing(prog: OneHotProgram, d: np.ndarray, root: float, value: float, incumbent: np.ndarray):
    """Reduced-cost fixing by probing: the options no choice better than the incumbent can use.

    d: reduced costs of the linearization's columns (x, then y in linearize.build's pair order)
    with Lagrangian bound `root` = rows + Σ min(0, d_v) (every column at its cheaper bound). Setting
    column v to 1 costs max(d_v, 0) over that bound, to 0 max(-d_v, 0); columns enter the bound
    separately, so the costs of any set of settings add up. Choosing option i sets x_i = 1, the other
    options of its layer and all their pairs to 0, and for every other layer m exactly one pair y_ij
    (j in m) to 1 and the rest of i's pairs with m to 0: probe(i) = root + those costs, with the
    cheapest j per layer. Options with probe(i) above the incumbent are removed; then, round by
    round, the removed options' columns are set to 0 in the baseline and left out of the cheapest
    j, which can remove more. Every choice that uses a removed option is worth at least the probe of
    the first one removed among its options (that round's probe only assumed options removed
    earlier are unused), so the least probe of the removed options bounds all of them.
    Returns (keep mask, bound of the removed options (inf if none), rounds)."""
    n = len(prog.layer)
    layer, L = prog.layer, prog.n_layers
    first, second = pairs(layer)
    dx = d[:n]
    dy = np.zeros((n, n))  # 0 where there is no pair column (options of one layer)
    dy[first, second] = d[n:]
    dy[second, first] = d[n:]
    one_x, zero_x = np.maximum(dx, 0.0), np.maximum(-dx, 0.0)
    one_y, zero_y = np.maximum(dy, 0.0), np.maximum(-dy, 0.0)
    margin = 1e-9 * max(1.0, abs(value))
    keep = np.ones(n, dtype=bool)
    keep_bound = np.inf
    rounds = 0
    members = [prog.options_of(m) for m in range(L)]
    while True:
        rounds += 1
        dead = ~keep
        # baseline: removed options (and all their pairs) at 0
        pair_dead = dead[:, None] | dead[None, :]
        base = root + zero_x[dead].sum() + (zero_y * np.triu(pair_dead, 1)).sum()
        zero_row = zero_y * ~dead[None, :]  # pairs of i with live options; dead ones are already at 0 in base
        probe = base + one_x
        for m in range(L):
            cols = members[m]
            live = cols[keep[cols]]
            # for each option i: min over live j in m of one_y[i, j] + sum of the other live j' of zero_y[i, j']
            block_zero = zero_row[:, live].sum(axis=1)
            best = (one_y[:, live] - zero_row[:, live]).min(axis=1) + block_zero
            other = layer != m
            probe[other] += best[other]
        # the other live options of i's layer at 0, with their pairs to live options of other layers
        # (options of one layer share no pair column)
        other_cost = (zero_x + zero_row.sum(axis=1)) * keep
        layer_sum = np.bincount(layer, weights=other_cost, minlength=L)
        probe += layer_sum[layer] - other_cost
        out = keep & (probe > value + margin)
        out[np.asarray(incumbent)] = False  # numerically safe: the incumbent itself always stays
        if not out.any():
            break
        keep_bound = min(keep_bound, float(probe[out].min()))
        keep &= ~out
    return keep, keep_bound, rounds


def _ipm_root(prog: OneHotProgram, budget_rlt: bool, seconds: float):
    """The root LP with every row, by interior point without crossover: (bound or None, reduced
    costs, notes)."""
    t0 = time.perf_counter()
    model = build(prog, budget_rlt=budget_rlt)
    h = _highs(model, integer=False, options={"solver": "ipm", "run_crossover": "off", "time_limit": max(seconds, 0.01)})
    h.run()
    solution = h.getSolution()
    root, d = None, None
    if solution.dual_valid:
        root, d = lagrangian_bound(model, np.asarray(solution.row_dual))
    status = h.modelStatusToString(h.getModelStatus())
    return root, d, [f"root LP ({model.A.shape[0]} rows x {model.n_cols} columns, interior point) {status.lower()} in "
                     f"{time.perf_counter() - t0:.1f} s" + (f", bound {root:.6g}" if root is not None else ", no bound")]


LAZY_SEED = False  # the incumbent's budget RLT rows in the first round: measured slower (docs/solvers.md)
LAZY_ROWS_PER_ROUND = 200  # the most violated budget RLT rows added per round


def _lazy_root(prog: OneHotProgram, value: float, tol: float, deadline: float, solver: Optional[str] = None,
               seed: Optional[np.ndarray] = None):
    """The root LP with the budget RLT rows separated lazily: the LP with the one-hot RLT rows
    only, then, round by round, the budget RLT rows the LP point violates are added and the LP
    re-solved (dual simplex from the last basis), until none is violated, the bound reaches the
    incumbent or time runs out. Every round's bound is the Lagrangian bound of the full model
    (the left-out rows' multipliers 0), so it is valid whenever the round stopped. Returns
    (best bound or None, its reduced costs, the options whose budget RLT rows were added, notes).
    solver: of the first round (later rounds: dual simplex from its basis); default interior point
    with crossover from IPM_COLUMNS columns, else simplex (measured, docs/solvers.md). seed: options
    whose budget RLT rows are in the first round already (the incumbent's: the rows a choice near
    it makes tight)."""
    t0 = time.perf_counter()
    full = build(prog, budget_rlt=True)
    if solver is None:
        solver = "ipm" if full.n_cols >= IPM_COLUMNS else "simplex"
    A = full.A.tocsr()
    lazy = full.budget_rlt_rows[full.budget_rlt_rows >= 0]
    active = np.ones(A.shape[0], dtype=bool)
    active[lazy] = False
    if seed is not None:
        seeded = full.budget_rlt_rows[:, np.asarray(seed)]
        active[seeded[seeded >= 0]] = True
    rows = np.nonzero(active)[0]
    sub = LinearModel(c=full.c, offset=full.offset, A=A[rows], row_lower=full.row_lower[rows], row_upper=full.row_upper[rows],
                      col_lower=full.col_lower, col_upper=full.col_upper, n_x=full.n_x, first=full.first, second=full.second,
                      budget_rlt_rows=np.full_like(full.budget_rlt_rows, -1))
    h = _highs(sub, integer=False, options={"solver": solver, "run_crossover": "on", "time_limit": max(deadline - time.perf_counter(), 0.01)})
    order = list(rows)  # the full model's row of each row of h
    best, best_d, rounds, status = None, None, 0, "not run"
    while True:
        # HiGHS counts its time limit over every run of the object
        h.setOptionValue("time_limit", h.getRunTime() + max(deadline - time.perf_counter(), 0.01))
        h.run()
        rounds += 1
        h.setOptionValue("solver", "simplex")
        status = h.modelStatusToString(h.getModelStatus()).lower()
        solution = h.getSolution()
        if solution.dual_valid:
            pi = np.zeros(A.shape[0])
            pi[np.asarray(order)] = np.asarray(solution.row_dual)
            bound, d = lagrangian_bound(full, pi)
            if best is None or bound > best:
                best, best_d = bound, d
        if status != "optimal" or not solution.value_valid or (best is not None and value - best <= tol):
            break
        left = np.nonzero(~active)[0]
        violation = A[left] @ np.asarray(solution.col_value) - full.row_upper[left]
        bad = np.argsort(-violation)[: LAZY_ROWS_PER_ROUND]
        new = left[bad[violation[bad] > 1e-7]]
        if len(new) == 0 or time.perf_counter() >= deadline:
            break
        active[new] = True
        order.extend(new)
        block = A[new]
        h.addRows(len(new), full.row_lower[new], full.row_upper[new], block.nnz, block.indptr[:-1].astype(np.int32),
                  block.indices.astype(np.int32), block.data)
    added = np.isin(full.budget_rlt_rows, np.nonzero(active)[0]) & (full.budget_rlt_rows >= 0)
    options = np.nonzero(added.any(axis=0))[0]
    note = (f"root LP with lazy budget RLT rows ({solver}, then dual simplex; {len(rows)} rows x {full.n_cols} columns, then {int(active.sum()) - len(rows)} "
            f"more of {len(lazy)} budget RLT rows added in {rounds} rounds{'' if seed is None else ', the incumbent' + chr(39) + 's in the first'}) {status} in {time.perf_counter() - t0:.1f} s"
            + (f", bound {best:.6g}" if best is not None else ", no bound"))
    return best, best_d, options, [note]

"""Solve the bit-width programs: the IQP (CLADO) and the ILP (MPQCO, HAWQ-V3, naive).

Both choose one candidate per decided layer (one-hot binary x) with the decided bytes within
the budget. The IQP minimizes x'Gx with G indefinite; three treatments (`psd`):

- exact (the recommended one): x'Gx itself. A heuristic incumbent first (heuristic.py: greedy,
  local search, neighbourhood search with exact subproblems), then
  - highs (highspy, directly): the root LP of the strongest linearization (pair variables with
    one-hot RLT and budget RLT rows, linearize.py), reduced-cost fixing by probing against the
    incumbent, and HiGHS's MIP on what is left, started from the incumbent (exact.py);
  - scip (through CVXPY): the same linearization as one MIP;
  - gurobi (through CVXPY): `quad_form(x, psd_wrap(G + λI)) − λL`, which equals x'Gx on one-hot
    x; the pip licence refuses a quadratic model with more than 200 variables;
  - with a root formulation (the default) and highspy installed, scip and gurobi first get
    HiGHS's root LP and probing (exact.root_fixing) and solve only the options left;
  - auto: highs, scip, gurobi (measured order, docs/solvers.md), the first installed one that
    accepts the model; with none installed, the heuristic's choice (status "heuristic").
  The answer is never worse than the incumbent, whatever the solver returned.
- shift: minimizes x'(G + λI)x as the first release of this option did (same argmin); the
  solvers are asked for the tolerance on x'Gx, not on the shifted value.
- clip (the release's): minimizes x'Cx, C = G with negative eigenvalues clipped, a different
  program; kept to reproduce the release.
ILP solvers run through CVXPY, auto order gurobi, scip, highs (any is milliseconds).

`objective`, `best_bound` and `gap` of an IQP are always on the true x'Gx (gap =
(objective − bound)/|objective|; `gap_percent` the same in %); predicted loss increase =
objective/2. What the solver itself minimized is in `minimized_objective`/`minimized_bound`
(shift, clip). `optimal` is true only with a proof: for exact and shift, the true gap within
REL_GAP (or an absolute tolerance of 1e-9 x the scale of G); for clip, optimal for the clipped
program (it has no bound on x'Gx). A time limit hit with a feasible choice gives status
"time_limit", with the bound and gap when there is one.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ..errors import SolverError, UsageError
from .exact import DEFAULT_FORMULATION, FORMULATIONS, root_fixing
from .exact import solve as solve_exact_highs
from .backends import (ABS_GAP, ABS_SCALE, AUTO_ORDER, EXACT_AUTO_ORDER, PSD_TREATMENTS, REL_GAP, SOLVERS,  # noqa: F401
                       _Backend, _backends_for, _checked_time_limit, _Model, _NoSolution, _solver_output_to_stderr,
                       _why)
from .constraints import Constraints, Reduction, size_row
from .heuristic import OneHotProgram, incumbent
from .linearize import LinearModel
from .linearize import build as build_linearization
from .problem import OptionSpace, check_budget, clip_psd, finite_array, shift_lambda

HEURISTIC_SECONDS = 1.0  # at most; 10% of the time limit when that is less


@dataclass
class SolveResult:
    """A solver's answer.

    `objective` is evaluated in numpy at the returned choice: x'Gx for the IQP (G as given,
    whatever the treatment), s'x for the ILP. `best_bound` and `gap` are on that same objective
    (gap = (objective - bound) / |objective|, None without a bound; `gap_percent` = 100 x gap).
    For the IQP, `original_objective` is x'Gx too (kept for older readers), predicted loss
    increase = objective / 2, `minimized_objective`/`minimized_bound` are on the matrix the solver
    minimized (G + λI for shift, clipped G for clip, G for exact), `root_bound` the root LP's
    bound (exact, highs) and `incumbent_objective` the heuristic's x'Gx (exact).
    """

    choice: List[int]
    bits: List[int]
    objective: float
    best_bound: Optional[float]
    gap: Optional[float]
    status: str
    optimal: bool
    solver: str
    solver_note: str
    seconds: float
    decided_bytes: float = 0.0
    original_objective: Optional[float] = None
    psd: Optional[str] = None
    psd_shift: Optional[float] = None
    gap_percent: Optional[float] = None
    predicted_loss_increase: Optional[float] = None
    minimized_objective: Optional[float] = None
    minimized_bound: Optional[float] = None
    root_bound: Optional[float] = None
    incumbent_objective: Optional[float] = None
    constraints: Optional[List[dict]] = None  # every cost row at the choice: value, bound, slack, binding

    def __post_init__(self):
        self.gap_percent = None if self.gap is None else 100.0 * self.gap

    def to_dict(self) -> dict:
        self.gap_percent = None if self.gap is None else 100.0 * self.gap
        return asdict(self)


def _solve(
    red: Reduction,
    solver: str,
    time_limit: float,
    build: Callable[[_Backend], _Model],
    objective: Callable[[np.ndarray], float],
    gaps: Tuple[float, float] = (REL_GAP, ABS_GAP),
    order: Tuple[str, ...] = AUTO_ORDER,
    backends: Optional[Tuple[List[_Backend], List[str]]] = None,
) -> SolveResult:
    """Try the requested backends in turn on the reduced program (its variables are the reduced
    options); return the first answer, honest about its status. `objective` (of the space's
    one-hot x) and `best_bound` are on the program the backends minimized."""
    import cvxpy as cp

    space = red.space
    time_limit = _checked_time_limit(time_limit)
    backends, skipped = backends or _backends_for(solver, order)
    explicit = (solver or "").strip().lower() != "auto"
    started = time.perf_counter()
    notes = list(skipped)
    for backend in backends:
        model = None
        attempt_start = time.perf_counter()
        try:
            with _solver_output_to_stderr(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CVXPY warns "may be inaccurate" at a time limit
                model = build(backend)
                warm = getattr(model.x, "value", None) is not None
                model.problem.solve(solver=backend.cvxpy_name, warm_start=warm, **backend.options(time_limit, *gaps))
        except cp.error.SolverError as exc:
            if time.perf_counter() - attempt_start >= time_limit:
                raise _NoSolution(f"{backend.name} found no feasible solution within the time limit of {time_limit:g} s") from exc
            with _solver_output_to_stderr():
                why = backend.refusal(model.problem, model.quadratic) if model is not None else None
            reason = f"{backend.name} refused the model ({why})" if why else f"{backend.name} failed ({exc})"
            if explicit:
                raise SolverError(f"{reason}; try another solver: {', '.join(n for n in order if n != backend.name)}") from exc
            notes.append(reason)
            continue
        x = model.x.value
        if model.problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            raise _infeasible(red, backend.name)
        if x is None or model.problem.status not in cp.settings.SOLUTION_PRESENT:
            if time.perf_counter() - attempt_start >= 0.9 * time_limit:
                raise _NoSolution(f"{backend.name} stopped at its time limit of {time_limit:g} s without a feasible "
                                  f"solution; raise time_limit (solver status {model.problem.status})",
                                  params=("time_limit",))
            raise _NoSolution(f"{backend.name} found no feasible solution (status {model.problem.status}, time limit {time_limit:g} s)")
        choice = red.choice(_argmax_per_layer(red.layer, x))
        if not red.constraints.admits(space, choice):
            raise SolverError(f"{backend.name} returned a choice that breaks a constraint: "
                              + "; ".join(f"{r['name']} {r['value']:.6g} of {r['bound']:.6g} {r['unit']}" for r in red.report(choice)))
        status, optimal, bound = backend.outcome(model.problem)
        value = objective(space.one_hot(choice))
        return SolveResult(
            choice=choice,
            bits=space.bits_of(choice),
            objective=value,
            best_bound=bound,
            gap=_relative_gap(value, bound),
            status=status,
            optimal=optimal,
            solver=backend.name,
            solver_note=f"{_why(backend, explicit, notes, order)}; {model.formulation}",
            seconds=time.perf_counter() - started,
            decided_bytes=space.size_of(choice),
        )
    raise SolverError(f"no solver could solve the model: {'; '.join(notes)}")


def _argmax_per_layer(layer: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The largest entry of x in each layer's options (option indices)."""
    x = np.asarray(x, dtype=float)
    starts = np.concatenate([[0], np.cumsum(np.bincount(layer))])
    return np.array([starts[g] + int(np.argmax(x[starts[g]:starts[g + 1]])) for g in range(len(starts) - 1)])


def _infeasible(red: Reduction, solver: str) -> UsageError:
    """The budgets cannot be met together (each alone can: Reduction.check ran first)."""
    parts = [f"{r.name} <= {r.text(r.bound)} (alone feasible from {r.text(lo)})" for r, (lo, _) in zip(red.rows, red.ranges())]
    return UsageError(f"no choice meets every budget at once ({solver} proved it): " + ", ".join(parts))


def _relative_gap(value: float, bound: Optional[float]) -> Optional[float]:
    """(incumbent - bound) / |incumbent|, as Gurobi defines MIPGap; None without a bound."""
    if bound is None:
        return None
    diff = max(0.0, value - bound)
    if abs(value) > 1e-12:
        return diff / abs(value)
    return 0.0 if diff <= 1e-12 else None


def _common_constraints(x, prog: OneHotProgram) -> list:
    """One option per layer of the reduced program and every cost row within its bound."""
    n = len(prog.layer)
    one_hot = sp.csr_matrix((np.ones(n), (prog.layer, np.arange(n))), shape=(prog.n_layers, n))
    out = [one_hot @ x == 1]
    if len(prog.caps):
        out.append(prog.costs @ x <= prog.limit)
    return out


def _linear_rows(m: LinearModel, x) -> Tuple[object, list]:
    """A linearization's objective and rows over x (binary) and its pair variables, for CVXPY."""
    import cvxpy as cp

    n = m.n_x
    y = cp.Variable(m.n_cols - n, nonneg=True)
    A = m.A.tocsc()
    Ax = A[:, :n] @ x + A[:, n:] @ y
    eq = m.row_lower == m.row_upper
    up = np.isfinite(m.row_upper) & ~eq
    rows = [Ax[np.nonzero(eq)[0]] == m.row_lower[eq], Ax[np.nonzero(up)[0]] <= m.row_upper[up], y <= 1]
    return m.c[:n] @ x + m.c[n:] @ y + m.offset, rows


def _constraints(space: OptionSpace, budget_bytes: Optional[int], constraints: Optional[Constraints]) -> Reduction:
    """The reduction of the space under the size budget (when given) and the other constraints,
    after checking that each budget alone can be met."""
    cons = constraints or Constraints()
    if budget_bytes is not None:
        check_budget(space, budget_bytes)
        cons = Constraints([size_row(space, budget_bytes)] + list(cons.rows), cons.allowed, cons.ties)
    if not cons.rows and constraints is None:
        raise UsageError("give a budget: a size budget or constraints")
    red = Reduction(space, cons)
    red.check()
    return red


def _abs_tolerance(prog: OneHotProgram) -> float:
    """ABS_SCALE x Σ_layers max_i |G_ii|: the absolute gap that counts as closed (an objective
    near 0 cannot be proven to a relative gap)."""
    if not prog.n_layers:
        return ABS_GAP
    return max(ABS_GAP, ABS_SCALE * float(np.maximum.reduceat(np.abs(np.diag(prog.Q)), prog.starts[:-1]).sum()))


def _closed(value: float, bound: Optional[float], abs_tol: float) -> bool:
    return bound is not None and value - bound <= max(abs_tol, REL_GAP * abs(value))


def solve_iqp(
    G: np.ndarray,
    space: OptionSpace,
    budget_bytes: Optional[int] = None,
    psd: str = "exact",
    solver: str = "auto",
    time_limit: float = 120.0,
    heuristic_seconds: Optional[float] = None,
    formulation: Optional[str] = None,
    constraints: Optional[Constraints] = None,
) -> SolveResult:
    """CLADO's program: minimize x'Gx over one-hot x within the size budget (when given) and the
    other constraints (cost rows, allowed options, ties; constraints.py).

    psd="exact" minimizes x'Gx itself (see the module text); psd="shift" minimizes x'(G+λI)x,
    whose argmin over one-hot x is that of G; psd="clip" minimizes x'Cx with C = G with negative
    eigenvalues clipped (the release; changes the problem). heuristic_seconds: time for the
    incumbent of exact (default min(1 s, 10% of time_limit)). formulation (exact, highs and
    scip): one of exact.FORMULATIONS, default exact.DEFAULT_FORMULATION.
    """
    n = space.n_options
    G = finite_array(G, (n, n), "G")
    G = (G + G.T) / 2.0
    if psd not in PSD_TREATMENTS:
        raise UsageError(f"unknown PSD treatment {psd!r}; choose one of: {', '.join(PSD_TREATMENTS)}")
    time_limit = _checked_time_limit(time_limit)
    red = _constraints(space, budget_bytes, constraints)
    if psd == "exact":
        formulation = formulation or DEFAULT_FORMULATION
        if formulation not in FORMULATIONS:
            raise UsageError(f"unknown formulation {formulation!r}; choose one of: {', '.join(FORMULATIONS)}")
        result = _solve_exact(G, red, solver, time_limit, heuristic_seconds, formulation)
        result.constraints = red.report(result.choice, G)
        return result
    prog_G = red.program(G)
    abs_tol = _abs_tolerance(prog_G)
    if psd == "clip":
        Q, lam, gaps = clip_psd(G), None, (REL_GAP, ABS_GAP)
    else:
        lam = shift_lambda(G)
        Q = G + lam * np.eye(n)
        # the tolerance asked of the solver is on x'Gx: an absolute gap from a quick incumbent
        start = incumbent(prog_G, time_limit=min(0.2, 0.05 * time_limit))
        estimate = prog_G.value(start) if start is not None else 0.0
        gaps = (0.0, max(abs_tol, REL_GAP * abs(estimate)))
    Q_red = red.reduce_matrix(Q)

    def build(backend: _Backend) -> _Model:
        import cvxpy as cp

        prog = red.program(Q)
        x = cp.Variable(len(prog.layer), boolean=True)
        constraints = _common_constraints(x, prog)
        if backend.name == "gurobi":
            objective = cp.quad_form(x, cp.psd_wrap(Q_red))
            formulation = f"quadratic objective on {len(prog.layer)} binaries"
        else:
            m = build_linearization(prog, budget_rlt=False)
            objective, rows = _linear_rows(m, x)
            constraints += rows
            formulation = f"pair linearization: {m.n_x} binaries, {m.n_cols - m.n_x} pair variables"
        return _Model(cp.Problem(cp.Minimize(objective), constraints), x, True, formulation)

    result = _solve(red, solver, time_limit, build, lambda x: float(x @ Q @ x), gaps=gaps)
    x = space.one_hot(result.choice)
    true_value = float(x @ G @ x)
    result.minimized_objective, result.minimized_bound = result.objective, result.best_bound
    result.objective = result.original_objective = true_value
    result.predicted_loss_increase = true_value / 2.0
    result.psd, result.psd_shift = psd, lam
    if psd == "shift":
        # on one-hot x, x'(G+λI)x = x'Gx + λL exactly, so the bound moves by the same constant
        shift = lam * space.n_layers
        result.best_bound = None if result.best_bound is None else result.best_bound - shift
        result.gap = _relative_gap(true_value, result.best_bound)
        if result.optimal and not _closed(true_value, result.best_bound, gaps[1]):
            result.optimal, result.status = False, "gap_not_closed"
    else:
        # the clipped program's bound says nothing about x'Gx (x'Gx <= x'Cx, not >=)
        result.best_bound, result.gap = None, None
        result.solver_note += "; clip minimizes x'Cx (C = G with negative eigenvalues clipped), a different program: optimal refers to it, and there is no bound on x'Gx"
    result.gap_percent = None if result.gap is None else 100.0 * result.gap
    result.constraints = red.report(result.choice, G)
    return result


def _solve_exact(G: np.ndarray, red: Reduction, solver: str, time_limit: float,
                 heuristic_seconds: Optional[float], formulation: str) -> SolveResult:
    space = red.space
    started = time.perf_counter()
    deadline = started + time_limit
    prog = red.program(G)
    abs_tol = _abs_tolerance(prog)
    seconds = min(HEURISTIC_SECONDS, 0.1 * time_limit) if heuristic_seconds is None else float(heuristic_seconds)
    opts = incumbent(prog, time_limit=seconds)
    inc_value = prog.value(opts) if opts is not None else None
    inc_note = (f"incumbent {inc_value:.6g} (greedy, local search, neighbourhood search) in {time.perf_counter() - started:.2f} s"
                if opts is not None else "the heuristic found no choice meeting every budget; the solver searched without a start")
    backends, skipped = _backends_for(solver, EXACT_AUTO_ORDER, allow_none=True)
    explicit = (solver or "").strip().lower() != "auto"
    notes = list(skipped)

    def result(opts, bound, root, proven, status, name, note):
        if opts is None:
            raise SolverError(f"{name} found no choice meeting every budget within the time limit of {time_limit:g} s ({note}); "
                              "raise time_limit or loosen a budget", params=("time_limit",))
        choice = red.choice(opts)
        value = prog.value(opts)
        if bound is not None and bound > value:
            bound = value  # equal to the solver's tolerance
        gap = _relative_gap(value, bound)
        return SolveResult(
            choice=choice, bits=space.bits_of(choice), objective=value, best_bound=bound, gap=gap,
            status="optimal" if proven else status, optimal=proven, solver=name, solver_note=note,
            seconds=time.perf_counter() - started, decided_bytes=space.size_of(choice), original_objective=value,
            psd="exact", psd_shift=None, predicted_loss_increase=value / 2.0, minimized_objective=value,
            minimized_bound=bound, root_bound=root, incumbent_objective=inc_value,
        )

    for backend in backends:
        why = _why(backend, explicit, notes, EXACT_AUTO_ORDER)
        remaining = deadline - time.perf_counter()
        if backend.name == "highs":
            try:
                with _solver_output_to_stderr():
                    out = solve_exact_highs(prog, opts, deadline, REL_GAP, abs_tol, formulation=formulation)
            except Exception as exc:  # highspy failing is reported, and auto goes on
                if explicit:
                    raise SolverError(f"highs failed ({exc}); try another solver: scip, gurobi") from exc
                notes.append(f"highs failed ({exc})")
                continue
            if out.infeasible:
                raise _infeasible(red, "highs")
            proven = out.opts is not None and (out.proven or _closed(out.value, out.bound, abs_tol))
            status = "time_limit" if time.perf_counter() >= deadline - 0.01 else "not_proven"
            return result(out.opts, out.bound, out.root_bound, proven, status, "highs",
                          f"{why}; formulation {formulation}; {inc_note}; " + "; ".join(out.notes))
        # a root formulation: HiGHS's root LP and probing first (when highspy is there), then this
        # solver on the options left (exact.root_fixing; measured, docs/solvers.md)
        sub, pre, pre_note = red, None, ""
        if FORMULATIONS[formulation][1] and opts is not None and remaining > 0 and _installed("highs"):
            with _solver_output_to_stderr():
                pre = root_fixing(prog, opts, deadline, max(abs_tol, REL_GAP * abs(inc_value)), formulation)
            pre_note = f"; HiGHS first: {'; '.join(pre.notes)}"
            if pre.proven:
                return result(opts, pre.bound, pre.root, True, "optimal", backend.name,
                              f"{why}; formulation {formulation}; {inc_note}{pre_note}; the incumbent is optimal")
            if pre.root is not None:
                sub = red.restricted(pre.keep)
            remaining = deadline - time.perf_counter()
        pre_bound, pre_root = (pre.bound, pre.root) if pre is not None else (None, None)
        if remaining <= 0:
            return result(opts, pre_bound, pre_root, False, "time_limit", backend.name,
                          f"{why}; {inc_note}{pre_note}; the time limit was spent before {backend.name} could start; the incumbent is the answer")
        lam = shift_lambda(G) if backend.name == "gurobi" else 0.0
        sub_opts = None if opts is None else sub.opts_of(red.choice(opts))
        model_of = _exact_cvxpy_model(G, sub, sub.program(G), sub_opts, lam, FORMULATIONS[formulation][0])
        try:
            r = _solve(sub, backend.name, remaining, model_of, lambda x: float(x @ G @ x),
                       gaps=(0.0, max(abs_tol, REL_GAP * abs(inc_value or 0.0))), order=EXACT_AUTO_ORDER,
                       backends=([backend], []))
        except _NoSolution as exc:
            return result(opts, pre_bound, pre_root, False, "time_limit", backend.name,
                          f"{why}; {inc_note}{pre_note}; {exc}; the incumbent is the answer")
        except SolverError as exc:
            if explicit:
                raise
            notes.append(str(exc).split("; try another solver")[0])
            continue
        bound = None if r.best_bound is None else r.best_bound - lam * space.n_layers
        if pre_root is not None:  # every choice uses only kept options, or is worth at least the removed ones' bound
            bound = max(pre_root, min(-np.inf if bound is None else bound, pre.excluded_bound))
        best = red.opts_of(r.choice)
        kept = ""
        if opts is not None and prog.value(best) > inc_value:
            best, kept = opts, "; the solver's choice was worse than the incumbent, which is kept"
        value = prog.value(best)
        proven = _closed(value, bound, max(abs_tol, REL_GAP * abs(value))) or (r.optimal and bound is not None)
        return result(best, bound, pre_root, proven, r.status if r.status != "optimal" else "not_proven", backend.name,
                      f"{why}; {inc_note}{pre_note}; {r.solver_note.split('; ', 1)[-1]}{kept}")
    note = "; ".join(notes + ["no MIP solver could solve the model" if backends else "no MIP solver installed"])
    if opts is None:
        raise SolverError(f"{note}, and the heuristic found no choice meeting every budget at once; install highspy or loosen a budget")
    return result(opts, None, None, False, "heuristic", "heuristic",
                  f"{note}: the heuristic's choice ({inc_note}), not proven optimal; install highspy for a proof")


def _installed(name: str) -> bool:
    """Whether CVXPY has the solver (what _backends_for goes by)."""
    import cvxpy as cp

    return SOLVERS.get(name).cvxpy_name in cp.installed_solvers()


def _exact_cvxpy_model(G, red: Reduction, prog: OneHotProgram, opts, lam, budget_rlt):
    """build(backend) for scip (the linearization with budget RLT rows) and gurobi (x'(G+λI)x,
    which is x'Gx + λL on one-hot x); both start from the incumbent where CVXPY passes it on."""

    def build(backend: _Backend) -> _Model:
        import cvxpy as cp

        n = len(prog.layer)
        x = cp.Variable(n, boolean=True)
        if opts is not None:
            start = np.zeros(n)
            start[np.asarray(opts)] = 1.0
            x.value = start
        constraints = _common_constraints(x, prog)
        if backend.name == "gurobi":
            objective = cp.quad_form(x, cp.psd_wrap(red.reduce_matrix(G + lam * np.eye(len(G)))))
            formulation = f"quadratic objective x'(G+λI)x on {n} binaries, λ = {lam:.3g}, reported as x'Gx"
        else:
            m = build_linearization(prog, budget_rlt=budget_rlt)
            objective, rows = _linear_rows(m, x)
            constraints += rows
            formulation = (f"pair linearization with one-hot{' and budget' if budget_rlt else ''} RLT rows: {n} binaries, "
                           f"{m.n_cols - n} pair variables, {m.A.shape[0]} rows")
        return _Model(cp.Problem(cp.Minimize(objective), constraints), x, True, formulation)

    return build


def solve_ilp(
    s: np.ndarray,
    space: OptionSpace,
    budget_bytes: Optional[int] = None,
    solver: str = "auto",
    time_limit: float = 120.0,
    constraints: Optional[Constraints] = None,
) -> SolveResult:
    """The per-layer methods' program: minimize s'x over one-hot x within the size budget (when
    given) and the other constraints."""
    n = space.n_options
    s = finite_array(s, (n,), "the sensitivity vector")
    red = _constraints(space, budget_bytes, constraints)
    prog = red.program(np.diag(s))
    s_red = red.reduce_vector(s)

    def build(backend: _Backend) -> _Model:
        import cvxpy as cp

        x = cp.Variable(len(s_red), boolean=True)
        problem = cp.Problem(cp.Minimize(s_red @ x), _common_constraints(x, prog))
        return _Model(problem, x, False, f"linear objective on {len(s_red)} binaries")

    result = _solve(red, solver, time_limit, build, lambda x: float(s @ x))
    result.constraints = red.report(result.choice, np.diag(s))
    return result

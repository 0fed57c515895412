"""Solve the bit-width programs: the IQP (CLADO) and the ILP (MPQCO, HAWQ-V3, naive).

Both choose one candidate per decided layer (one-hot binary x) with the decided bytes within
the budget. Solvers run through CVXPY:

- gurobi: the IQP as `quad_form(x, psd_wrap(Q))`. The pip licence refuses a quadratic model
  with more than 200 variables (and any model over 2000 variables or constraints).
- scip, highs: the IQP linearized exactly with one variable y_ij per pair of options of
  different layers, objective Σ Q_ii x_i + 2 Σ_{i<j} Q_ij y_ij, y ≥ 0, and for every option i
  and every other layer m: Σ_{j in m} y_ij = x_i. For one-hot binary x these force
  y_ij = x_i x_j (NOTES.md "Solvers").
- auto: gurobi, then scip, then highs, taking the first installed one that accepts the model;
  `solver_note` says which and why.

`optimal` is true only when the solver proved optimality (within relative gap REL_GAP). A
time limit hit with a feasible incumbent gives status "time_limit", with the solver's bound
and gap when it reports them.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ..errors import SolverError, UsageError
from ..registry import Registry
from .problem import OptionSpace, check_budget, clip_psd, finite_array, shift_lambda

REL_GAP = 1e-6  # relative optimality gap asked of every solver (their defaults differ: 1e-4, 0, 1e-4)
ABS_GAP = 1e-10
AUTO_ORDER = ("gurobi", "scip", "highs")
PSD_TREATMENTS = ("clip", "shift")


@dataclass
class SolveResult:
    """A solver's answer.

    `objective` is evaluated in numpy at the returned choice: x'Qx for the IQP, with Q the matrix
    the solver minimized (clipped G, or G + λI for shift), and s'x for the ILP. `best_bound` and
    `gap` are on that same objective (gap = (objective - bound) / |objective|). For the IQP,
    `original_objective` is x'Gx on the matrix as given; predicted loss increase = it / 2.
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Model:
    """A CVXPY problem ready to solve, with its one-hot variable and a line describing it."""

    problem: object
    x: object
    quadratic: bool
    formulation: str


class _Backend:
    name = ""
    cvxpy_name = ""

    def options(self, time_limit: float) -> dict:
        raise NotImplementedError

    def outcome(self, problem) -> Tuple[str, bool, Optional[float]]:
        """(status, proven optimal, best bound or None) after a solve that returned a solution."""
        raise NotImplementedError

    def refusal(self, problem, quadratic: bool) -> Optional[str]:
        """Why the solver refused a model, when that can be found out; None otherwise."""
        return None


SOLVERS: Registry[_Backend] = Registry("solver")


def _finite_or_none(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class _Gurobi(_Backend):
    name, cvxpy_name = "gurobi", "GUROBI"
    _STATUS = {2: "optimal", 9: "time_limit", 13: "suboptimal"}

    def options(self, time_limit):
        return {"TimeLimit": float(time_limit), "MIPGap": REL_GAP, "MIPGapAbs": ABS_GAP}

    def outcome(self, problem):
        model = problem.solver_stats.extra_stats
        code = int(model.Status)
        try:
            bound = _finite_or_none(model.ObjBound)
        except Exception:  # gurobipy raises when the attribute is unavailable
            bound = None
        return self._STATUS.get(code, f"gurobi status {code}"), code == 2, bound

    def refusal(self, problem, quadratic):
        """Rebuild a model of the same size in gurobipy to read the error CVXPY swallows."""
        import gurobipy as gp

        metrics = problem.size_metrics
        n_vars = int(metrics.num_scalar_variables)
        n_rows = int(metrics.num_scalar_eq_constr + metrics.num_scalar_leq_constr)
        try:
            with gp.Model() as model:
                model.Params.OutputFlag = 0
                model.Params.TimeLimit = 1.0
                v = model.addVars(n_vars, vtype=gp.GRB.BINARY)
                for row in range(max(n_rows, 1)):
                    model.addConstr(v[row % n_vars] <= 1)
                model.setObjective(v[0] * v[0] if quadratic else v[0])
                model.optimize()
        except gp.GurobiError as exc:
            return f"{str(exc).split(';')[0]}, error {exc.errno}"
        return None


class _Scip(_Backend):
    name, cvxpy_name = "scip", "SCIP"

    def options(self, time_limit):
        return {"scip_params": {"limits/time": float(time_limit), "limits/gap": REL_GAP, "limits/absgap": ABS_GAP}}

    def outcome(self, problem):
        stats = problem.solver_stats.extra_stats
        raw = stats["scip_status"]
        optimal = raw in ("optimal", "gaplimit")
        status = "optimal" if optimal else "time_limit" if raw == "timelimit" else raw
        return status, optimal, _finite_or_none(stats["model"].getDualbound())


class _Highs(_Backend):
    name, cvxpy_name = "highs", "HIGHS"

    def options(self, time_limit):
        return {"time_limit": float(time_limit), "mip_rel_gap": REL_GAP, "mip_abs_gap": ABS_GAP}

    def outcome(self, problem):
        # CVXPY keeps only HiGHS's info, not its model status; the only limit set is the time.
        raw = problem.status
        status = {"optimal": "optimal", "user_limit": "time_limit"}.get(raw, raw)
        return status, raw == "optimal", _finite_or_none(problem.solver_stats.extra_stats.mip_dual_bound)


for _backend in (_Gurobi(), _Scip(), _Highs()):
    SOLVERS.register(_backend.name)(_backend)


@contextmanager
def _solver_output_to_stderr():
    """Solvers print banners on the C-level stdout (HiGHS on every model, gurobipy's licence line
    once); send them to stderr so that a command's stdout stays clean JSON."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        # gurobipy writes its licence banner through Python's sys.stdout, not the C-level one
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, 1)
        os.close(saved)


def _backends_for(solver: str) -> Tuple[List[_Backend], List[str]]:
    """The backends to try in order, and notes on the ones skipped."""
    import cvxpy as cp

    installed = cp.installed_solvers()
    name = (solver or "").strip().lower()
    if name != "auto" and name not in SOLVERS:
        raise UsageError(
            f"unknown solver {solver!r}; choose auto, {', '.join(AUTO_ORDER)} "
            f"(solvers CVXPY has installed: {', '.join(installed) or 'none'})"
        )
    if name != "auto":
        backend = SOLVERS.get(name)
        if backend.cvxpy_name not in installed:
            raise SolverError(f"solver {name} is not installed (solvers CVXPY has installed: {', '.join(installed) or 'none'})")
        return [backend], []
    backends = [SOLVERS.get(n) for n in AUTO_ORDER]
    usable = [b for b in backends if b.cvxpy_name in installed]
    if not usable:
        raise SolverError(f"no MIP solver installed: install gurobipy, pyscipopt or highspy (CVXPY has: {', '.join(installed) or 'none'})")
    return usable, [f"{b.name} not installed" for b in backends if b not in usable]


def _solve(
    space: OptionSpace,
    budget_bytes: int,
    solver: str,
    time_limit: float,
    build: Callable[[_Backend], _Model],
    objective: Callable[[np.ndarray], float],
) -> SolveResult:
    """Try the requested backends in turn; return the first answer, honest about its status."""
    import cvxpy as cp

    given_limit = time_limit
    time_limit = _finite_or_none(time_limit)
    if time_limit is None or time_limit <= 0:
        raise UsageError(f"invalid solver time limit {given_limit!r}: expected a positive number of seconds")
    check_budget(space, budget_bytes)
    backends, skipped = _backends_for(solver)
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
                model.problem.solve(solver=backend.cvxpy_name, **backend.options(time_limit))
        except cp.error.SolverError as exc:
            if time.perf_counter() - attempt_start >= time_limit:
                raise SolverError(f"{backend.name} found no feasible solution within the time limit of {time_limit:g} s") from exc
            with _solver_output_to_stderr():
                why = backend.refusal(model.problem, model.quadratic) if model is not None else None
            reason = f"{backend.name} refused the model ({why})" if why else f"{backend.name} failed ({exc})"
            if explicit:
                raise SolverError(f"{reason}; try another solver: {', '.join(n for n in AUTO_ORDER if n != backend.name)}") from exc
            notes.append(reason)
            continue
        x = model.x.value
        if x is None or model.problem.status not in cp.settings.SOLUTION_PRESENT:
            if time.perf_counter() - attempt_start >= 0.9 * time_limit:
                raise SolverError(f"{backend.name} stopped at its time limit of {time_limit:g} s without a feasible "
                                  f"solution; raise --time-limit (solver status {model.problem.status})")
            raise SolverError(f"{backend.name} found no feasible solution (status {model.problem.status}, time limit {time_limit:g} s)")
        choice = space.choice_of(x)
        if not space.fits(choice, budget_bytes):
            raise SolverError(
                f"{backend.name} returned a choice of {space.size_of(choice):.0f} bytes, over the budget of {budget_bytes} bytes"
            )
        status, optimal, bound = backend.outcome(model.problem)
        value = objective(space.one_hot(choice))
        if explicit:
            why = f"{backend.name} as requested"
        elif notes:
            why = f"{'; '.join(notes)}; fell back to {backend.name}"
        else:
            why = f"{backend.name}: first choice of auto ({', '.join(AUTO_ORDER)})"
        return SolveResult(
            choice=choice,
            bits=space.bits_of(choice),
            objective=value,
            best_bound=bound,
            gap=_relative_gap(value, bound),
            status=status,
            optimal=optimal,
            solver=backend.name,
            solver_note=f"{why}; {model.formulation}",
            seconds=time.perf_counter() - started,
            decided_bytes=space.size_of(choice),
        )
    raise SolverError(f"no solver could solve the model: {'; '.join(notes)}")


def _relative_gap(value: float, bound: Optional[float]) -> Optional[float]:
    """(incumbent - bound) / |incumbent|, as Gurobi defines MIPGap; None without a bound."""
    if bound is None:
        return None
    diff = max(0.0, value - bound)
    if abs(value) > 1e-12:
        return diff / abs(value)
    return 0.0 if diff <= 1e-12 else None


def _common_constraints(x, space: OptionSpace, budget_bytes: int) -> list:
    one_hot = sp.kron(sp.eye(space.n_layers), np.ones((1, len(space.candidates))), format="csr")
    return [one_hot @ x == 1, space.sizes() @ x <= budget_bytes]


def _pair_linearization(Q: np.ndarray, space: OptionSpace, x):
    """Objective and constraints of the exact pair linearization of x'Qx for one-hot x."""
    import cvxpy as cp

    n, n_cand = space.n_options, len(space.candidates)
    layers = space.option_layers()
    first, second = np.triu_indices(n, 1)
    across = layers[first] != layers[second]
    first, second = first[across], second[across]
    n_pairs = len(first)
    y = cp.Variable(n_pairs, nonneg=True)
    pair_of = np.full((n, n), -1)
    pair_of[first, second] = pair_of[second, first] = np.arange(n_pairs)
    # one row per (option i, other layer m): the y of i with m's options sum to x_i
    row_option, row_layer = np.nonzero(layers[:, None] != np.arange(space.n_layers)[None, :])
    n_rows = len(row_option)
    cols = pair_of[row_option[:, None], row_layer[:, None] * n_cand + np.arange(n_cand)[None, :]]
    A = sp.csr_matrix((np.ones(cols.size), (np.repeat(np.arange(n_rows), n_cand), cols.ravel())), shape=(n_rows, n_pairs))
    S = sp.csr_matrix((np.ones(n_rows), (np.arange(n_rows), row_option)), shape=(n_rows, n))
    objective = np.diag(Q) @ x + (2.0 * Q[first, second]) @ y
    return objective, [A @ y == S @ x], n_pairs


def solve_iqp(
    G: np.ndarray,
    space: OptionSpace,
    budget_bytes: int,
    psd: str = "clip",
    solver: str = "auto",
    time_limit: float = 120.0,
) -> SolveResult:
    """CLADO's program: minimize x'Gx over one-hot x within the budget.

    psd="clip" minimizes x'Cx with C = G with negative eigenvalues clipped (the release; changes
    the problem); psd="shift" minimizes x'(G+λI)x, whose argmin over one-hot x is that of G.
    """
    n = space.n_options
    G = finite_array(G, (n, n), "G")
    G = (G + G.T) / 2.0
    if psd == "clip":
        Q, lam = clip_psd(G), None
    elif psd == "shift":
        lam = shift_lambda(G)
        Q = G + lam * np.eye(n)
    else:
        raise UsageError(f"unknown PSD treatment {psd!r}; choose one of: {', '.join(PSD_TREATMENTS)}")

    def build(backend: _Backend) -> _Model:
        import cvxpy as cp

        x = cp.Variable(n, boolean=True)
        constraints = _common_constraints(x, space, budget_bytes)
        if backend.name == "gurobi":
            objective = cp.quad_form(x, cp.psd_wrap(Q))
            formulation = f"quadratic objective on {n} binaries"
        else:
            objective, pair_constraints, n_pairs = _pair_linearization(Q, space, x)
            constraints += pair_constraints
            formulation = f"pair linearization: {n} binaries, {n_pairs} pair variables"
        return _Model(cp.Problem(cp.Minimize(objective), constraints), x, True, formulation)

    result = _solve(space, budget_bytes, solver, time_limit, build, lambda x: float(x @ Q @ x))
    x = space.one_hot(result.choice)
    result.original_objective = float(x @ G @ x)
    result.psd, result.psd_shift = psd, lam
    return result


def solve_ilp(
    s: np.ndarray,
    space: OptionSpace,
    budget_bytes: int,
    solver: str = "auto",
    time_limit: float = 120.0,
) -> SolveResult:
    """The per-layer methods' program: minimize s'x over one-hot x within the budget."""
    n = space.n_options
    s = finite_array(s, (n,), "the sensitivity vector")

    def build(backend: _Backend) -> _Model:
        import cvxpy as cp

        x = cp.Variable(n, boolean=True)
        problem = cp.Problem(cp.Minimize(s @ x), _common_constraints(x, space, budget_bytes))
        return _Model(problem, x, False, f"linear objective on {n} binaries")

    return _solve(space, budget_bytes, solver, time_limit, build, lambda x: float(s @ x))

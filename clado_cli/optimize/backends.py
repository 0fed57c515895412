"""The solver backends behind the programs: Gurobi, SCIP and HiGHS through CVXPY (a registry),
the choice of backends for `auto`, their outcomes, and keeping their banners off stdout."""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import SolverError, UsageError
from ..registry import Registry

REL_GAP = 1e-6  # relative optimality gap asked of every solver (their defaults differ: 1e-4, 0, 1e-4)
ABS_GAP = 1e-10
ABS_SCALE = 1e-9  # IQP: absolute tolerance on x'Gx = ABS_SCALE x Σ_layers max |G_ii| (objectives near 0)
AUTO_ORDER = ("gurobi", "scip", "highs")  # ILP, and the release's clip and shift
EXACT_AUTO_ORDER = ("highs", "scip", "gurobi")  # exact IQP: measured, docs/solvers.md
PSD_TREATMENTS = ("exact", "clip", "shift")

# CPU threads a solver may use (the config's `threads`); None: the solver's own default
_THREADS: ContextVar[Optional[int]] = ContextVar("solver_threads", default=None)


@contextmanager
def solver_threads(n: Optional[int]):
    """Solvers started inside use at most `n` threads (HiGHS, SCIP's LP, Gurobi)."""
    token = _THREADS.set(int(n) if n else None)
    try:
        yield
    finally:
        _THREADS.reset(token)


def threads() -> Optional[int]:
    return _THREADS.get()


_HIGHS_POOL = [0]  # the thread count HiGHS's pool was last sized for (0: its default)


def highs_pool() -> None:
    """Size HiGHS's thread pool for threads() before a run. HiGHS keeps one pool per process, sized
    by its first run; a later run asking for another count fails (model status "not set") unless
    the pool is reset."""
    wanted = threads() or 0
    if wanted != _HIGHS_POOL[0]:
        try:
            import highspy
        except ImportError:  # HiGHS not installed: nothing to size
            return
        highspy.Highs.resetGlobalScheduler(True)
        _HIGHS_POOL[0] = wanted


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

    def options(self, time_limit: float, rel_gap: float = REL_GAP, abs_gap: float = ABS_GAP) -> dict:
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

    def options(self, time_limit, rel_gap=REL_GAP, abs_gap=ABS_GAP):
        opts = {"TimeLimit": float(time_limit), "MIPGap": rel_gap, "MIPGapAbs": abs_gap}
        return {**opts, "Threads": threads()} if threads() else opts

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

    def options(self, time_limit, rel_gap=REL_GAP, abs_gap=ABS_GAP):
        params = {"limits/time": float(time_limit), "limits/gap": rel_gap, "limits/absgap": abs_gap}
        if threads():
            params["lp/threads"] = threads()
        return {"scip_params": params}

    def outcome(self, problem):
        stats = problem.solver_stats.extra_stats
        raw = stats["scip_status"]
        optimal = raw in ("optimal", "gaplimit")
        status = "optimal" if optimal else "time_limit" if raw == "timelimit" else raw
        return status, optimal, _finite_or_none(stats["model"].getDualbound())


class _Highs(_Backend):
    name, cvxpy_name = "highs", "HIGHS"

    def options(self, time_limit, rel_gap=REL_GAP, abs_gap=ABS_GAP):
        opts = {"time_limit": float(time_limit), "mip_rel_gap": rel_gap, "mip_abs_gap": abs_gap}
        highs_pool()  # called right before CVXPY's solve
        return {**opts, "threads": threads()} if threads() else opts

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
    once); send them to stderr so that a command's stdout stays clean JSON, or nowhere when the
    command is quiet (-q means nothing but errors)."""
    from ..console import is_quiet

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = os.dup(1)
        saved_err = os.dup(2)
    except OSError:
        yield
        return
    sink = open(os.devnull, "w") if is_quiet() else None
    try:
        os.dup2(sink.fileno() if sink else 2, 1)
        if sink:
            os.dup2(sink.fileno(), 2)
        # gurobipy writes its licence banner through Python's sys.stdout, not the C-level one
        with contextlib.redirect_stdout(sink or sys.stderr):
            yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.dup2(saved_err, 2)
        os.close(saved_err)
        if sink:
            sink.close()


class _NoSolution(SolverError):
    """The solver ran but returned no feasible choice (a time limit, or it found none)."""


def _backends_for(solver: str, order: Tuple[str, ...] = AUTO_ORDER, allow_none: bool = False) -> Tuple[List[_Backend], List[str]]:
    """The backends to try in order, and notes on the ones skipped. allow_none: auto with no
    solver installed gives no backends instead of an error."""
    import cvxpy as cp

    installed = cp.installed_solvers()
    name = (solver or "").strip().lower()
    if name != "auto" and name not in SOLVERS:
        raise UsageError(
            f"unknown solver {solver!r}; choose auto, {', '.join(order)} "
            f"(solvers CVXPY has installed: {', '.join(installed) or 'none'})"
        )
    if name != "auto":
        backend = SOLVERS.get(name)
        if backend.cvxpy_name not in installed:
            raise SolverError(f"solver {name} is not installed (solvers CVXPY has installed: {', '.join(installed) or 'none'})")
        return [backend], []
    backends = [SOLVERS.get(n) for n in order]
    usable = [b for b in backends if b.cvxpy_name in installed]
    if not usable and not allow_none:
        raise SolverError(f"no MIP solver installed: install gurobipy, pyscipopt or highspy (CVXPY has: {', '.join(installed) or 'none'})")
    return usable, [f"{b.name} not installed" for b in backends if b not in usable]


def _checked_time_limit(time_limit) -> float:
    value = _finite_or_none(time_limit)
    if value is None or value <= 0:
        raise UsageError(f"invalid solver time limit {time_limit!r}: expected a positive number of seconds")
    return value


def _why(backend: _Backend, explicit: bool, notes: List[str], order: Tuple[str, ...]) -> str:
    if explicit:
        return f"{backend.name} as requested"
    if notes:
        return f"{'; '.join(notes)}; fell back to {backend.name}"
    return f"{backend.name}: first choice of auto ({', '.join(order)})"



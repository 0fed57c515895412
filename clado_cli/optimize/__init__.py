"""Choose bit widths under a size budget: budgets, the option space, and the IQP/ILP solvers.

Pure numpy and scipy; CVXPY and highspy are imported lazily, when a program is solved; no torch.
heuristic.py (incumbent), linearize.py (the exact linearization), exact.py (HiGHS directly) and
solvers.py (the public entry points); docs/solvers.md has the measurements.
"""
from .brute import brute_force
from .budget import (
    Budget,
    format_bytes,
    parse_budget_list,
    parse_size,
    resolve_budget,
    resolve_budget_spec,
)
from .problem import (
    OptionSpace,
    check_budget,
    clip_psd,
    g_from_ltilde,
    predicted_increase_linear,
    predicted_increase_quadratic,
    shift_lambda,
)
from .backends import solver_threads
from .solvers import SOLVERS, SolveResult, solve_ilp, solve_iqp

__all__ = [
    "Budget",
    "OptionSpace",
    "SOLVERS",
    "SolveResult",
    "brute_force",
    "check_budget",
    "clip_psd",
    "format_bytes",
    "g_from_ltilde",
    "parse_budget_list",
    "parse_size",
    "predicted_increase_linear",
    "predicted_increase_quadratic",
    "resolve_budget",
    "resolve_budget_spec",
    "shift_lambda",
    "solve_ilp",
    "solve_iqp",
    "solver_threads",
]

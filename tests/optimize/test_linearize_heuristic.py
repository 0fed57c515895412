"""The linearization's rows and bounds, and the heuristic's answers."""
import itertools
import time

import numpy as np
import pytest

from clado_cli.optimize.brute import brute_force
from clado_cli.optimize.heuristic import OneHotProgram, exchange, incumbent, local_search, solve_subproblem
from clado_cli.optimize.linearize import build, lagrangian_bound

from .test_exact import budget_at, clado_like

highspy = pytest.importorskip("highspy")


def program(seed, n_layers, fraction, candidates=(2, 4, 8)):
    space, G = clado_like(seed, n_layers, candidates)
    budget = budget_at(space, fraction)
    prog = OneHotProgram(G, space.option_layers(), np.outer(space.numel, space.candidates).ravel(), 8 * budget)
    return space, G, budget, prog


def all_choices(prog):
    return [np.array([prog.starts[l] + k for l, k in enumerate(c)])
            for c in itertools.product(*[range(prog.starts[l + 1] - prog.starts[l]) for l in range(prog.n_layers)])]


@pytest.mark.parametrize("complement", [False, True])
def test_every_choice_satisfies_the_rows_iff_it_fits_and_the_objective_is_exact(complement):
    _, G, _, prog = program(0, 4, 0.3)
    m = build(prog, budget_rlt_complement=complement)
    for opts in all_choices(prog):
        v = m.point(opts)
        Av = m.A @ v
        inside = np.all(Av >= m.row_lower - 1e-9) and np.all(Av <= m.row_upper + 1e-9)
        assert inside == prog.fits(opts)
        assert m.c @ v + m.offset == pytest.approx(prog.value(opts), rel=1e-12, abs=1e-12)


def lp_bound(model):
    from clado_cli.optimize.exact import _highs

    h = _highs(model, integer=False, options={"solver": "simplex"})
    h.run()
    assert h.modelStatusToString(h.getModelStatus()) == "Optimal"
    return h.getInfo().objective_function_value, np.asarray(h.getSolution().row_dual)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_rlt_tightens_the_root_and_its_complement_adds_nothing(seed):
    _, G, _, prog = program(seed, 8, 0.15)
    plain, _ = lp_bound(build(prog, budget_rlt=False))
    rlt, _ = lp_bound(build(prog))
    both, _ = lp_bound(build(prog, budget_rlt_complement=True))
    _, best = brute_force_prog(prog)
    assert plain <= rlt + 1e-9 <= best + 2e-9
    assert both == pytest.approx(rlt, rel=1e-7, abs=1e-9)


def brute_force_prog(prog):
    values = [(prog.value(o), tuple(o)) for o in all_choices(prog) if prog.fits(o)]
    value, opts = min(values)
    return np.array(opts), value


def test_lagrangian_bound_is_valid_for_any_multipliers_and_exact_at_the_lp_duals():
    _, G, _, prog = program(3, 6, 0.2)
    model = build(prog)
    lp, duals = lp_bound(model)
    bound, _ = lagrangian_bound(model, duals)
    assert bound == pytest.approx(lp, rel=1e-7, abs=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        noisy = duals + rng.normal(0, 0.1, size=duals.shape) * (np.abs(duals).max() + 1)
        assert lagrangian_bound(model, noisy)[0] <= lp + 1e-9


@pytest.mark.parametrize("seed, n_layers, fraction", [(s, n, f) for s, n in [(0, 5), (1, 7), (2, 8)] for f in (0.05, 0.2, 0.5, 1.0)])
def test_heuristic_finds_the_optimum_of_small_programs(seed, n_layers, fraction):
    space, G, budget, prog = program(seed, n_layers, fraction)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    opts = incumbent(prog, time_limit=0.5)
    assert prog.fits(opts) and space.fits([int(o) % 3 for o in opts], budget)
    assert prog.value(opts) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_heuristic_is_within_one_percent_of_the_optimum_in_a_second():
    if "HIGHS" not in __import__("cvxpy").installed_solvers():
        pytest.skip("highs not installed")
    from clado_cli.optimize.solvers import solve_iqp

    for seed in (0, 1):
        space, G, budget, prog = program(seed, 25, 0.2)
        exact = solve_iqp(G, space, budget, psd="exact", solver="highs", time_limit=60)
        assert exact.optimal
        started = time.perf_counter()
        opts = incumbent(prog, time_limit=1.0)
        assert time.perf_counter() - started < 1.5
        assert prog.value(opts) <= exact.objective + 0.01 * abs(exact.objective)


def test_local_moves_keep_the_choice_within_the_budget_and_never_worsen_it():
    space, G, budget, prog = program(4, 12, 0.1, candidates=(2, 3, 4, 8))
    rng = np.random.default_rng(0)
    narrow = prog.narrowest()
    for _ in range(5):
        start = narrow.copy()
        for l in rng.choice(prog.n_layers, size=3, replace=False):  # a feasible random start
            trial = start.copy()
            trial[l] = prog.starts[l] + rng.integers(4)
            if prog.fits(trial):
                start = trial
        after = local_search(prog, start)
        assert prog.fits(after) and prog.value(after) <= prog.value(start) + 1e-12
        chain = exchange(prog, after)
        assert chain is None or (prog.fits(chain) and prog.value(chain) < prog.value(after))
        free = np.sort(rng.choice(prog.n_layers, size=5, replace=False))
        sub = solve_subproblem(prog, after, free)
        assert prog.fits(sub) and prog.value(sub) <= prog.value(after) + 1e-12
        assert np.array_equal(np.delete(sub, free), np.delete(after, free))


def test_heuristic_when_only_the_narrowest_choice_fits():
    space, G, _, prog = program(5, 6, 0.0)
    prog = OneHotProgram(prog.Q, prog.layer, prog.costs, prog.used(prog.narrowest()))
    assert np.array_equal(incumbent(prog, time_limit=0.2), prog.narrowest())


def test_restrict_keeps_every_value():
    from clado_cli.optimize.exact import restrict

    _, G, _, prog = program(6, 5, 0.4)
    rng = np.random.default_rng(1)
    keep = rng.random(len(prog.layer)) < 0.6
    for l in range(prog.n_layers):
        keep[prog.starts[l]] = True
    keep[prog.options_of(2)] = False
    keep[prog.starts[2] + 1] = True  # layer 2 folded into the constants
    reduced, free, fixed = restrict(prog, keep)
    assert reduced.n_layers == sum(keep[prog.options_of(l)].sum() > 1 for l in range(prog.n_layers))
    for sub in all_choices(reduced):
        full = np.zeros(prog.n_layers, dtype=int)
        full[prog.layer[fixed]] = fixed
        full[prog.layer[free[sub]]] = free[sub]
        assert reduced.value(sub) == pytest.approx(prog.value(full), rel=1e-12, abs=1e-12)
        assert reduced.fits(sub) == prog.fits(full)

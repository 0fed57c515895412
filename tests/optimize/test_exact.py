"""The exact treatment of the IQP (psd="exact"): optimality against brute force with every
solver, true gaps and bounds, never worse than the incumbent, the fallback without a solver."""
import subprocess
import sys

import numpy as np
import pytest

from clado_cli.optimize.brute import brute_force
from clado_cli.optimize.problem import OptionSpace, g_from_ltilde
from clado_cli.optimize.solvers import solve_ilp, solve_iqp

cp = pytest.importorskip("cvxpy")
INSTALLED = cp.installed_solvers()


def solver_param(name):
    return pytest.param(name, marks=pytest.mark.skipif(name.upper() not in INSTALLED, reason=f"{name} not installed"))


SOLVERS = [solver_param(n) for n in ("highs", "scip", "gurobi")] + ["auto"]


def clado_like(seed, n_layers, candidates=(2, 4, 8)):
    """A G shaped like a measured one: single-option loss deltas falling 4x per extra bit (a few
    wide ones negative), cross-layer terms of random sign; indefinite."""
    rng = np.random.default_rng(seed)
    B = len(candidates)
    space = OptionSpace([f"l{i}" for i in range(n_layers)], list(candidates), list(rng.integers(100, 5000, size=n_layers)))
    bits = np.array(candidates, dtype=float)
    d = (rng.lognormal(0, 1, size=n_layers)[:, None] * 4.0 ** -(bits - bits[0])).ravel()
    d += rng.normal(0, 0.01, size=d.shape) * d.min()
    n = space.n_options
    R = rng.normal(0, 1.0 / np.sqrt(n_layers), size=(n, n))
    cross = (R + R.T) / 2 * np.sqrt(np.abs(np.outer(d, d)))
    Lt = np.diag(d) + cross + (d[:, None] + d[None, :]) * (1 - np.eye(n))
    G = g_from_ltilde(Lt, space)
    assert np.linalg.eigvalsh(G)[0] < 0
    return space, G


def budget_at(space, fraction):
    low, high = space.min_bytes(), space.max_bytes()
    return int(low + fraction * (high - low))


def assert_true_answer(result, space, budget, G):
    x = space.one_hot(result.choice)
    assert space.fits(result.choice, budget)
    assert result.bits == space.bits_of(result.choice)
    assert result.objective == pytest.approx(float(x @ G @ x), rel=1e-12, abs=1e-12)
    assert result.predicted_loss_increase == pytest.approx(result.objective / 2)
    if result.best_bound is not None:
        assert result.best_bound <= result.objective
        assert result.gap == pytest.approx((result.objective - result.best_bound) / abs(result.objective))


CASES = [(seed, n_layers, fraction) for seed, n_layers in [(0, 4), (2, 8)] for fraction in (0.05, 0.3, 1.0)]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed, n_layers, fraction", CASES)
def test_exact_reaches_the_brute_force_optimum(solver, seed, n_layers, fraction):
    space, G = clado_like(seed, n_layers)
    budget = budget_at(space, fraction)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    result = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=30)
    assert result.psd == "exact" and result.psd_shift is None
    assert result.optimal and result.status == "optimal"
    assert result.objective == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert_true_answer(result, space, budget, G)
    assert result.best_bound == pytest.approx(best, rel=1e-6, abs=1e-8)
    assert result.incumbent_objective >= result.objective - 1e-12


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_with_four_widths_and_a_budget_that_admits_only_the_narrowest(solver):
    space, G = clado_like(3, 5, candidates=(2, 3, 4, 8))
    for budget in (int(np.ceil(space.min_bytes())), budget_at(space, 0.2)):
        _, best = brute_force(space, budget, lambda x: x @ G @ x)
        result = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=30)
        assert result.optimal and result.objective == pytest.approx(best, rel=1e-6, abs=1e-9)
        assert_true_answer(result, space, budget, G)


def planted(n_layers=6, junk=1e4, seed=0):
    """Diagonal G (no interactions) plus huge within-layer off-diagonal entries, which never meet
    a one-hot x but make G's smallest eigenvalue about -junk: the shift treatment then carries a
    constant of about junk x L. With the budget free the optimum is known: each layer's smallest
    diagonal entry."""
    rng = np.random.default_rng(seed)
    space = OptionSpace([f"l{i}" for i in range(n_layers)], [2, 4, 8], list(rng.integers(10, 100, size=n_layers)))
    c = rng.uniform(0.5, 2.0, size=space.n_options)
    G = np.diag(c)
    layers = space.option_layers()
    same = (layers[:, None] == layers[None, :]) & ~np.eye(space.n_options, dtype=bool)
    G[same] = junk
    return space, G, float(c.reshape(n_layers, 3).min(axis=1).sum())


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("psd", ["exact", "shift"])
def test_reported_objective_bound_and_gap_are_on_the_true_objective(solver, psd):
    space, G, optimum = planted()
    result = solve_iqp(G, space, int(space.max_bytes()), psd=psd, solver=solver, time_limit=30)
    assert result.optimal
    assert result.objective == pytest.approx(optimum, rel=1e-9)
    assert result.best_bound is not None and result.best_bound == pytest.approx(optimum, rel=1e-6)
    assert 0 <= result.gap <= 1e-6 and result.gap_percent == pytest.approx(100 * result.gap)
    if psd == "shift":
        # what the solver minimized carries the shift's constant; the report does not
        assert result.psd_shift >= 1e4 * 0.99
        assert result.minimized_objective == pytest.approx(optimum + result.psd_shift * space.n_layers)


@pytest.mark.parametrize("solver", [solver_param("highs"), solver_param("scip")])
def test_shift_proves_the_true_optimum_not_the_shifted_one(solver):
    """With a shift constant 1e6 times the objective, a relative tolerance on the shifted value
    would accept choices far from the optimum; the tolerance is asked on x'Gx."""
    space, G = clado_like(4, 7)
    layers = space.option_layers()
    same = (layers[:, None] == layers[None, :]) & ~np.eye(space.n_options, dtype=bool)
    G = G.copy()
    G[same] = 1e6 * np.abs(G).max()
    budget = budget_at(space, 0.3)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    result = solve_iqp(G, space, budget, psd="shift", solver=solver, time_limit=30)
    assert result.objective == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert result.gap is None or result.gap <= 1e-6 or not result.optimal


@pytest.mark.parametrize("formulation", ["pair", "pair+budget-rlt", "root+pair+budget-rlt", "root-lazy+pair+budget-rlt"])
def test_bounds_of_every_formulation_are_bounds_on_the_true_optimum(formulation):
    """Root and final bounds (HiGHS) never exceed the brute-force optimum, with every formulation,
    also when the solve is cut short."""
    if "HIGHS" not in INSTALLED:
        pytest.skip("highs not installed")
    space, G = clado_like(5, 9)
    budget = budget_at(space, 0.15)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    for limit in (30, 0.05):
        result = solve_iqp(G, space, budget, psd="exact", solver="highs", time_limit=limit, heuristic_seconds=0.01,
                           formulation=formulation)
        assert f"formulation {formulation};" in result.solver_note
        assert_true_answer(result, space, budget, G)
        for bound in (result.best_bound, result.root_bound):
            assert bound is None or bound <= best + 1e-9 * abs(best)
        if limit == 30:
            assert result.optimal and result.objective == pytest.approx(best, rel=1e-6)
            assert (result.root_bound is not None) == formulation.startswith("root")


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_lazy_budget_rlt_rows_give_the_optimum_and_root_bound_of_all_rows(seed):
    """root-lazy+pair+budget-rlt (budget RLT rows separated at the root, the MIP with only those)
    against the straightforward formulations: the same optimum (brute force), and its root bound
    is the full root LP's (every budget RLT row) once no row is violated, never above it."""
    if "HIGHS" not in INSTALLED:
        pytest.skip("highs not installed")
    from clado_cli.optimize.heuristic import OneHotProgram
    from clado_cli.optimize.exact import _ipm_root, _lazy_root

    space, G = clado_like(seed, 7)
    budget = budget_at(space, 0.2)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    values = {}
    for formulation in ("pair+budget-rlt", "root+pair+budget-rlt", "root-lazy+pair+budget-rlt"):
        result = solve_iqp(G, space, budget, psd="exact", solver="highs", time_limit=30, heuristic_seconds=0.01,
                           formulation=formulation)
        assert result.optimal and result.best_bound <= best + 1e-9 * abs(best)
        values[formulation] = result.objective
    assert values["root-lazy+pair+budget-rlt"] == pytest.approx(best, rel=1e-6)
    assert len(set(np.round(list(values.values()), 9))) == 1
    prog = OneHotProgram(G, space.option_layers(), np.outer(space.numel, space.candidates).ravel(), 8 * budget)
    full, _, _ = _ipm_root(prog, True, 30.0)
    import time
    lazy, _, options, notes = _lazy_root(prog, np.inf, 0.0, time.perf_counter() + 30.0)
    assert lazy <= best + 1e-9 * abs(best)
    assert lazy == pytest.approx(full, rel=1e-6, abs=1e-9), notes
    assert len(options) <= space.n_options


def hard_instance(n_layers=40, seed=1):
    rng = np.random.default_rng(seed)
    space = OptionSpace([f"l{i}" for i in range(n_layers)], [2, 4, 8], list(rng.integers(50, 500, size=n_layers)))
    Lt = rng.normal(size=(space.n_options, space.n_options))
    return space, g_from_ltilde((Lt + Lt.T) / 2, space)


def solver_layers(name, n_layers):
    return pytest.param(name, n_layers, marks=pytest.mark.skipif(name.upper() not in INSTALLED, reason=f"{name} not installed"))


@pytest.mark.parametrize("solver, n_layers", [solver_layers("highs", 70), solver_layers("scip", 70), solver_layers("gurobi", 60)])
def test_a_time_limited_exact_solve_is_never_worse_than_the_incumbent(solver, n_layers):
    space, G = hard_instance(n_layers)
    budget = budget_at(space, 0.4)
    result = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=1.5, heuristic_seconds=0.3)
    assert result.incumbent_objective is not None
    assert result.objective <= result.incumbent_objective + 1e-12
    assert result.status == ("optimal" if result.optimal else "time_limit")
    assert_true_answer(result, space, budget, G)
    assert result.seconds < 15


def test_exact_when_the_solver_returns_nothing_keeps_the_incumbent(monkeypatch):
    """A solver stopping without a solution (here SCIP at a tiny limit, forced) leaves the
    incumbent as the answer, marked not optimal; exit is not an error."""
    if "SCIP" not in INSTALLED:
        pytest.skip("scip not installed")
    from clado_cli.optimize import solvers

    def no_solution(*args, **kwargs):
        raise solvers._NoSolution("scip found no feasible solution within the time limit of 1 s")

    monkeypatch.setattr(solvers, "_solve", no_solution)
    space, G = clado_like(0, 6)
    result = solve_iqp(G, space, budget_at(space, 0.3), psd="exact", solver="scip", time_limit=5,
                       formulation="pair+budget-rlt")
    assert result.solver == "scip" and result.status == "time_limit" and not result.optimal
    assert result.objective == result.incumbent_objective and result.best_bound is None
    assert "the incumbent is the answer" in result.solver_note
    if "HIGHS" in INSTALLED:  # the default formulation: HiGHS's root bound is kept
        space, G = clado_like(13, 9)
        budget = budget_at(space, 0.1)
        _, best = brute_force(space, budget, lambda x: x @ G @ x)
        result = solve_iqp(G, space, budget, psd="exact", solver="scip", time_limit=5)
        assert result.status == "time_limit" and not result.optimal and result.objective == result.incumbent_objective
        assert result.best_bound == result.root_bound and result.best_bound < best
        assert "HiGHS first" in result.solver_note and "the incumbent is the answer" in result.solver_note


def test_exact_without_any_solver_answers_with_the_heuristic(monkeypatch):
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["CLARABEL", "SCS", "OSQP"])
    space, G = clado_like(1, 6)
    budget = budget_at(space, 0.3)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    result = solve_iqp(G, space, budget, psd="exact", time_limit=10)
    assert result.solver == "heuristic" and result.status == "heuristic" and not result.optimal
    assert result.best_bound is None and result.gap is None
    assert "no MIP solver installed" in result.solver_note
    assert result.objective == pytest.approx(best, rel=1e-9)  # small: the neighbourhood search enumerates it
    # the release's treatments and the ILP still need a solver
    from clado_cli.errors import SolverError

    with pytest.raises(SolverError, match="no MIP solver installed"):
        solve_iqp(G, space, budget, psd="clip")
    with pytest.raises(SolverError, match="no MIP solver installed"):
        solve_ilp(np.diag(G), space, budget)


def test_explicit_gurobi_that_refuses_the_exact_model_is_a_solver_error():
    if "GUROBI" not in INSTALLED:
        pytest.skip("gurobi not installed")
    from clado_cli.errors import SolverError

    space, G = hard_instance(n_layers=70)
    try:
        result = solve_iqp(G, space, budget_at(space, 0.4), psd="exact", solver="gurobi", time_limit=2)
    except SolverError as exc:
        assert "gurobi refused the model" in str(exc) and "try another solver" in str(exc)
        return
    assert result.solver == "gurobi"  # an unrestricted licence takes it


def test_auto_falls_back_past_a_refusing_solver_for_exact(monkeypatch):
    """auto goes on to the next solver when one fails, and says so."""
    if "HIGHS" not in INSTALLED or "SCIP" not in INSTALLED:
        pytest.skip("needs highs and scip")
    from clado_cli.optimize import solvers

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(solvers, "solve_exact_highs", broken)
    space, G = clado_like(2, 5)
    result = solve_iqp(G, space, budget_at(space, 0.3), psd="exact", time_limit=20)
    assert result.solver == "scip" and result.optimal
    assert result.solver_note.startswith("highs failed (simulated failure); fell back to scip")


def test_the_solver_layer_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from clado_cli.optimize import OptionSpace, solve_iqp\n"
        "s = OptionSpace(['a', 'b'], [2, 4], [3, 5])\n"
        "solve_iqp(np.eye(4), s, 4, time_limit=5)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_vanishing_time_limit_still_answers_with_the_incumbent(solver):
    """--time-limit 1e-9: the incumbent's greedy part still runs; the answer is feasible and
    marked time_limit (or optimal, when HiGHS proves it at once), never an error."""
    space, G = clado_like(7, 6)
    budget = budget_at(space, 0.3)
    result = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=1e-9)
    assert result.status in ("time_limit", "optimal") and space.fits(result.choice, budget)
    assert result.objective <= result.incumbent_objective + 1e-12


@pytest.mark.parametrize("solver", [solver_param("scip"), solver_param("gurobi")])
def test_scip_and_gurobi_finish_after_highs_root_and_probing(solver):
    """With the default (root) formulation and highspy installed, SCIP and Gurobi solve only the
    options HiGHS's root and probing left; the answer is still the brute-force optimum and the
    bound a bound on it. With `pair+budget-rlt` they get the whole program."""
    if "HIGHS" not in INSTALLED:
        pytest.skip("highs not installed")
    space, G = clado_like(13, 9)  # its root LP is 16% below the optimum; probing keeps 18 of 27 options
    budget = budget_at(space, 0.1)
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    r = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=60, heuristic_seconds=0.05)
    assert_true_answer(r, space, budget, G)
    assert r.optimal and r.objective == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert r.best_bound <= best + 1e-9 * abs(best) and r.root_bound <= r.best_bound
    assert "HiGHS first: root LP" in r.solver_note and "reduced-cost fixing (probing" in r.solver_note, r.solver_note
    whole = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=60, heuristic_seconds=0.05,
                      formulation="pair+budget-rlt")
    assert "HiGHS first" not in whole.solver_note and whole.root_bound is None
    assert whole.objective == pytest.approx(best, rel=1e-6, abs=1e-9)

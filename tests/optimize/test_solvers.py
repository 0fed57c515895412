import json

import numpy as np
import pytest

from clado_cli.errors import SolverError, UsageError
from clado_cli.optimize.brute import brute_force
from clado_cli.optimize.problem import OptionSpace, clip_psd, g_from_ltilde
from clado_cli.optimize.solvers import SolveResult, solve_ilp, solve_iqp

cp = pytest.importorskip("cvxpy")
INSTALLED = cp.installed_solvers()
SOLVER_NAMES = ["gurobi", "scip", "highs"]


def solver_param(name):
    return pytest.param(name, marks=pytest.mark.skipif(name.upper() not in INSTALLED, reason=f"{name} not installed"))


SOLVERS = [solver_param(n) for n in SOLVER_NAMES]


def random_problem(seed, n_layers):
    """Layers of different sizes, 3 candidates, an indefinite G from a random symmetric Ltilde."""
    rng = np.random.default_rng(seed)
    space = OptionSpace([f"layer{i}" for i in range(n_layers)], [2, 4, 8], list(rng.integers(10, 200, size=n_layers)))
    n = space.n_options
    Lt = rng.normal(size=(n, n))
    G = g_from_ltilde((Lt + Lt.T) / 2, space)
    assert np.linalg.eigvalsh(G)[0] < 0
    s = rng.normal(size=n)
    return space, G, s


def budgets_of(space):
    low, high = space.min_bytes(), space.max_bytes()
    return {"binding": int(low + 0.4 * (high - low)), "tight": int(low + 0.1 * (high - low)), "free": int(high)}


CASES = [(seed, n_layers, which) for seed, n_layers in [(0, 3), (1, 4), (2, 4)] for which in ("binding", "tight", "free")]


def assert_answer(result, space, budget, reference_value, value):
    assert result.optimal and result.status == "optimal"
    assert space.fits(result.choice, budget)
    assert result.bits == space.bits_of(result.choice)
    assert result.decided_bytes == space.size_of(result.choice)
    # ties are possible, so compare objective values, not choices
    assert value == pytest.approx(reference_value, rel=1e-6, abs=1e-9)
    assert result.best_bound is None or result.best_bound <= result.objective + 1e-6 * max(1, abs(result.objective))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed, n_layers, which", CASES)
def test_shift_reaches_the_optimum_of_the_original_g(solver, seed, n_layers, which):
    space, G, _ = random_problem(seed, n_layers)
    budget = budgets_of(space)[which]
    _, best = brute_force(space, budget, lambda x: x @ G @ x)
    result = solve_iqp(G, space, budget, psd="shift", solver=solver, time_limit=30)
    assert result.solver == solver and result.psd == "shift" and result.psd_shift > 0
    assert_answer(result, space, budget, best, result.objective)
    # objective and bound are on x'Gx; the minimized objective is the shifted one: x'Gx + λL
    assert result.objective == result.original_objective == pytest.approx(best)
    assert result.minimized_objective == pytest.approx(result.objective + result.psd_shift * space.n_layers)
    assert result.best_bound is None or result.best_bound <= best + 1e-6 * max(1, abs(best))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed, n_layers, which", CASES)
def test_clip_reaches_the_optimum_of_the_clipped_g(solver, seed, n_layers, which):
    space, G, _ = random_problem(seed, n_layers)
    budget = budgets_of(space)[which]
    C = clip_psd(G)
    _, best = brute_force(space, budget, lambda x: x @ C @ x)
    result = solve_iqp(G, space, budget, psd="clip", solver=solver, time_limit=30)
    assert result.psd == "clip" and result.psd_shift is None
    assert_answer(result, space, budget, best, result.minimized_objective)
    x = space.one_hot(result.choice)
    assert result.objective == result.original_objective == pytest.approx(x @ G @ x)
    assert result.minimized_objective == pytest.approx(x @ C @ x)
    # the clipped program's bound is no bound on x'Gx
    assert result.best_bound is None and result.gap is None


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed, n_layers, which", CASES)
def test_ilp_reaches_the_brute_force_optimum(solver, seed, n_layers, which):
    space, _, s = random_problem(seed, n_layers)
    budget = budgets_of(space)[which]
    _, best = brute_force(space, budget, lambda x: s @ x)
    result = solve_ilp(s, space, budget, solver=solver, time_limit=30)
    assert result.psd is None and result.original_objective is None
    assert_answer(result, space, budget, best, result.objective)


@pytest.mark.parametrize("solver", SOLVERS + ["auto"])
def test_ilp_without_binding_budget_picks_widest(solver):
    space = OptionSpace([f"l{i}" for i in range(5)], [2, 4, 8], [10, 20, 30, 40, 50])
    s = np.tile([3.0, 1.0, 0.2], space.n_layers)  # sensitivity falls with bit width
    result = solve_ilp(s, space, int(space.max_bytes()), solver=solver)
    assert result.bits == [8] * 5


def test_auto_takes_gurobi_first_for_the_release_treatments_and_says_so():
    if "GUROBI" not in INSTALLED:
        pytest.skip("gurobi not installed")
    space, G, s = random_problem(0, 3)
    result = solve_iqp(G, space, budgets_of(space)["binding"], psd="clip")
    assert result.solver == "gurobi"
    assert "first choice of auto (gurobi, scip, highs)" in result.solver_note


def test_auto_takes_highs_first_for_exact_and_says_so():
    if "HIGHS" not in INSTALLED:
        pytest.skip("highs not installed")
    space, G, s = random_problem(0, 3)
    result = solve_iqp(G, space, budgets_of(space)["binding"])
    assert result.solver == "highs" and result.psd == "exact" and result.optimal
    assert "highs: first choice of auto (highs, scip, gurobi)" in result.solver_note


def test_result_serializes_to_json():
    space, G, _ = random_problem(0, 3)
    result = solve_iqp(G, space, budgets_of(space)["binding"], psd="shift")
    assert isinstance(result, SolveResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["choice"] == result.choice and data["solver_note"] == result.solver_note


def test_solver_banners_stay_off_stdout(capfd):
    if "HIGHS" not in INSTALLED:
        pytest.skip("highs not installed")
    space, _, s = random_problem(1, 4)
    solve_ilp(s, space, budgets_of(space)["binding"], solver="highs")
    assert capfd.readouterr().out == ""


def test_budget_below_minimum_is_a_usage_error():
    space, G, s = random_problem(0, 3)
    budget = int(space.min_bytes()) - 1
    with pytest.raises(UsageError, match=rf"size budget {budget} bytes is below the smallest possible decided size"):
        solve_iqp(G, space, budget)
    with pytest.raises(UsageError, match="feasible range"):
        solve_ilp(s, space, budget)


def test_unknown_solver_lists_installed_solvers():
    space, G, _ = random_problem(0, 3)
    with pytest.raises(UsageError, match="unknown solver 'cplexx'") as err:
        solve_iqp(G, space, budgets_of(space)["free"], solver="cplexx")
    assert all(name in str(err.value) for name in INSTALLED)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"psd": "eig"}, "unknown PSD treatment"), ({"time_limit": 0}, "time limit"), ({"time_limit": float("nan")}, "time limit"), ({"time_limit": "soon"}, "time limit")],
)
def test_bad_options_are_usage_errors(kwargs, match):
    space, G, _ = random_problem(0, 3)
    with pytest.raises(UsageError, match=match):
        solve_iqp(G, space, budgets_of(space)["free"], **kwargs)


def test_time_limit_accepts_numpy_and_int_numbers():
    space, _, s = random_problem(0, 3)
    assert solve_ilp(s, space, budgets_of(space)["free"], time_limit=np.int64(5)).optimal
    assert solve_ilp(s, space, budgets_of(space)["free"], time_limit=5).optimal


def test_solver_names_are_case_insensitive():
    space, _, s = random_problem(0, 3)
    name = next(n for n in SOLVER_NAMES if n.upper() in INSTALLED)
    assert solve_ilp(s, space, budgets_of(space)["free"], solver=name.upper()).solver == name


def wide_problem():
    """210 options (> gurobi's 200-variable limit for quadratic models under the pip licence),
    easy: no cross-layer terms, every layer better wider, budget not binding."""
    rng = np.random.default_rng(0)
    n_layers = 70
    space = OptionSpace([f"l{i}" for i in range(n_layers)], [2, 4, 8], list(rng.integers(5, 50, size=n_layers)))
    G = np.diag(np.tile([3.0, 2.0, 1.0], n_layers) * np.repeat(rng.uniform(0.5, 2.0, size=n_layers), 3))
    return space, G


def gurobi_is_size_limited():
    if "GUROBI" not in INSTALLED:
        pytest.skip("gurobi not installed")
    import gurobipy as gp

    try:
        with gp.Model() as model:
            model.Params.OutputFlag = 0
            v = model.addVars(201, vtype=gp.GRB.BINARY)
            model.addConstr(gp.quicksum(v.values()) <= 1)
            model.setObjective(v[0] * v[1])
            model.optimize()
    except gp.GurobiError as exc:
        if exc.errno == 10010:
            return
        raise
    pytest.skip("this gurobi licence is not size-limited")


def test_auto_falls_back_when_gurobi_refuses_the_model():
    gurobi_is_size_limited()
    space, G = wide_problem()
    result = solve_iqp(G, space, int(space.max_bytes()), psd="shift", time_limit=30)
    assert result.solver in ("scip", "highs")
    assert result.solver_note.startswith("gurobi refused the model (Model too large for size-limited license, error 10010)")
    assert f"fell back to {result.solver}" in result.solver_note
    assert result.optimal and result.bits == [8] * space.n_layers


def test_explicit_gurobi_that_refuses_is_a_solver_error():
    gurobi_is_size_limited()
    space, G = wide_problem()
    with pytest.raises(SolverError, match="gurobi refused the model .*size-limited license.*try another solver") as err:
        solve_iqp(G, space, int(space.max_bytes()), psd="clip", solver="gurobi", time_limit=30)
    assert "\n" not in str(err.value)


def hard_problem(n_layers):
    rng = np.random.default_rng(1)
    space = OptionSpace([f"l{i}" for i in range(n_layers)], [2, 4, 8], list(rng.integers(50, 500, size=n_layers)))
    Lt = rng.normal(size=(space.n_options, space.n_options))
    return space, g_from_ltilde((Lt + Lt.T) / 2, space)


@pytest.mark.parametrize(
    "solver, psd, n_layers",
    [
        pytest.param("gurobi", "shift", 50, marks=pytest.mark.skipif("GUROBI" not in INSTALLED, reason="gurobi not installed")),
        pytest.param("highs", "shift", 50, marks=pytest.mark.skipif("HIGHS" not in INSTALLED, reason="highs not installed")),
        pytest.param("scip", "shift", 50, marks=pytest.mark.skipif("SCIP" not in INSTALLED, reason="scip not installed")),
        pytest.param("highs", "exact", 70, marks=pytest.mark.skipif("HIGHS" not in INSTALLED, reason="highs not installed")),
        pytest.param("scip", "exact", 50, marks=pytest.mark.skipif("SCIP" not in INSTALLED, reason="scip not installed")),
    ],
)
def test_time_limit_is_reported_honestly(solver, psd, n_layers):
    """Dense random instances that no solver closes in a second: status time_limit, not optimal,
    with a bound (when there is one) below the objective and the gap computed from both, all on
    x'Gx."""
    space, G = hard_problem(n_layers)
    budget = int((space.min_bytes() + space.max_bytes()) / 2)
    try:
        result = solve_iqp(G, space, budget, psd=psd, solver=solver, time_limit=1.0)
    except SolverError as exc:
        # shift (like clip) has no incumbent of its own: on a loaded machine SCIP may not find a
        # feasible point in 1 s, which is reported as such; exact always has the incumbent
        assert psd != "exact" and "no feasible solution within the time limit" in str(exc)
        return
    # on an idle machine HiGHS sometimes closes the shift instance within the second: then it must
    # be a proof (a gap within the tolerance on x'Gx), never a claim
    if result.optimal:
        assert result.status == "optimal" and result.gap is not None and result.gap <= 1e-6
        return
    assert result.status == "time_limit"
    assert space.fits(result.choice, budget)
    x = space.one_hot(result.choice)
    assert result.objective == pytest.approx(x @ G @ x)
    if result.best_bound is None:
        assert result.gap is None
    else:
        assert result.best_bound < result.objective
        assert result.gap == pytest.approx((result.objective - result.best_bound) / abs(result.objective))
        assert result.gap_percent == pytest.approx(100 * result.gap)
    assert result.seconds < 20


def test_solver_threads_reach_every_backend_and_highs_itself():
    """The config's `threads` bounds the solvers too (HiGHS ignored it before)."""
    from clado_cli.optimize import solver_threads
    from clado_cli.optimize.backends import SOLVERS

    plain = {name: SOLVERS.get(name).options(5.0) for name in ("highs", "scip", "gurobi")}
    with solver_threads(1):
        capped = {name: SOLVERS.get(name).options(5.0) for name in ("highs", "scip", "gurobi")}
    assert capped["highs"]["threads"] == 1 and "threads" not in plain["highs"]
    assert capped["scip"]["scip_params"]["lp/threads"] == 1 and capped["gurobi"]["Threads"] == 1
    space, G = random_problem(3, 4)[:2]
    with solver_threads(1):
        r = solve_iqp(G, space, int(space.max_bytes()), psd="exact", solver="highs", time_limit=10)
    assert r.optimal


def test_highs_runs_with_another_thread_count_after_a_first_run():
    """HiGHS sizes one thread pool per process at its first run; a later run with the config's
    `threads` (or back to the default) must still solve, not end with status "not set"."""
    from clado_cli.optimize import solver_threads

    space, G = random_problem(3, 4)[:2]
    budget = int(0.6 * space.max_bytes())
    for n in (None, 1, None, 2):
        if n is None:
            r = solve_iqp(G, space, budget, psd="exact", solver="highs", time_limit=10)
        else:
            with solver_threads(n):
                r = solve_iqp(G, space, budget, psd="exact", solver="highs", time_limit=10)
        assert r.optimal, (n, r.solver_note)

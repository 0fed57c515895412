"""Several budgets, allowed options and ties: every solver against brute force."""
import numpy as np
import pytest

from clado_cli.errors import UsageError
from clado_cli.optimize.brute import brute_force
from clado_cli.optimize.constraints import Constraints, CostRow, Reduction, size_row
from clado_cli.optimize.heuristic import incumbent
from clado_cli.optimize.problem import OptionSpace, g_from_ltilde
from clado_cli.optimize.solvers import solve_ilp, solve_iqp

cp = pytest.importorskip("cvxpy")
INSTALLED = cp.installed_solvers()
SOLVERS = [pytest.param(n, marks=pytest.mark.skipif(n.upper() not in INSTALLED, reason=f"{n} not installed"))
           for n in ("gurobi", "scip", "highs")]


def instance(seed, n_layers=5, candidates=(2, 4, 8)):
    """An indefinite G, a linear s, sizes, BOPs (MACs x w x 8) and a latency-like table that is
    not monotone in the width (a 4-bit kernel slower than the 8-bit one on some layers)."""
    rng = np.random.default_rng(seed)
    space = OptionSpace([f"l{i}" for i in range(n_layers)], list(candidates), list(rng.integers(10, 200, size=n_layers)))
    n = space.n_options
    Lt = rng.normal(size=(n, n))
    G = g_from_ltilde((Lt + Lt.T) / 2, space)
    s = rng.normal(size=n)
    macs = rng.integers(1000, 50_000, size=n_layers)
    bops = np.outer(macs, np.asarray(candidates) * 8).ravel().astype(float)
    latency = np.round(rng.uniform(0.1, 2.0, size=n), 3)
    return space, G, s, bops, latency


def three_budgets(space, bops, latency, f=(0.6, 0.5, 0.55)):
    def between(values, frac):
        v = values.reshape(space.n_layers, -1)
        return float(v.min(axis=1).sum() + frac * (v.max(axis=1).sum() - v.min(axis=1).sum()))

    size = size_row(space, int(space.min_bytes() + f[0] * (space.max_bytes() - space.min_bytes())))
    return [size, CostRow("bops", bops, np.floor(between(bops, f[1])), unit="BOPs"),
            CostRow("latency", latency, round(between(latency, f[2]), 3), unit="ms")]


def restrictions(space):
    B = len(space.candidates)
    allowed = np.ones(space.n_options, bool)
    allowed[0 * B + 0] = False  # l0: no 2 bits
    allowed[3 * B:3 * B + B] = False
    allowed[3 * B + 2] = True  # l3 pinned at 8 bits
    return allowed, [[1, 2]]  # l1 and l2 tied


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iqp_and_ilp_meet_three_budgets_ties_and_widths_as_brute_force_does(solver, seed):
    space, G, s, bops, latency = instance(seed)
    allowed, ties = restrictions(space)
    cons = Constraints(three_budgets(space, bops, latency, f=(0.75, 0.7, 0.75)), allowed, ties)
    ref_choice, ref = brute_force(space, None, lambda x: x @ G @ x, cons)
    assert ref_choice is not None
    r = solve_iqp(G, space, None, psd="exact", solver=solver, time_limit=60, constraints=cons)
    assert cons.admits(space, r.choice) and r.optimal
    assert r.objective == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert r.choice[1] == r.choice[2] and r.choice[3] == 2 and r.choice[0] != 0
    assert {c["name"] for c in r.constraints} == {"size", "bops", "latency"}
    assert all(c["value"] <= c["bound"] + 1e-9 for c in r.constraints)
    _, unconstrained = brute_force(space, None, lambda x: x @ G @ x, Constraints([], allowed, ties))
    # on these instances: a budget binds (blocks an improving change) when it keeps the program
    # from its unconstrained optimum; at that optimum no change improves, so none binds
    assert any(c["binding"] for c in r.constraints) == (unconstrained < ref - 1e-9)
    shift = solve_iqp(G, space, None, psd="shift", solver=solver, time_limit=60, constraints=cons)
    assert cons.admits(space, shift.choice) and shift.objective == pytest.approx(ref, rel=1e-6, abs=1e-9)
    ref_choice, ref_lin = brute_force(space, None, lambda x: s @ x, cons)
    lin = solve_ilp(s, space, None, solver=solver, time_limit=60, constraints=cons)
    assert cons.admits(space, lin.choice) and lin.objective == pytest.approx(ref_lin, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_heuristic_meets_every_row_and_the_exact_default_matches_brute_force(seed):
    space, G, _, bops, latency = instance(seed, n_layers=6)
    cons = Constraints(three_budgets(space, bops, latency, f=(0.3 + 0.1 * (seed % 3), 0.4, 0.5)))
    red = Reduction(space, cons)
    prog = red.program(G)
    opts = incumbent(prog, time_limit=0.2)
    ref_choice, ref = brute_force(space, None, lambda x: x @ G @ x, cons)
    if opts is not None:
        assert cons.admits(space, red.choice(opts))
    r = solve_iqp(G, space, None, constraints=cons, time_limit=60)
    assert r.objective == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_a_size_budget_and_a_constraints_size_row_give_the_same_answer():
    space, G, s, *_ = instance(3)
    budget = int(space.min_bytes() + 0.4 * (space.max_bytes() - space.min_bytes()))
    a = solve_iqp(G, space, budget, time_limit=30)
    b = solve_iqp(G, space, None, constraints=Constraints([size_row(space, budget)]), time_limit=30)
    assert a.choice == b.choice and a.objective == b.objective


def test_reduction_is_exact_for_every_admitted_choice():
    space, G, _, bops, latency = instance(4)
    allowed, ties = restrictions(space)
    cons = Constraints(three_budgets(space, bops, latency), allowed, ties)
    red = Reduction(space, cons)
    prog = red.program(G)
    import itertools

    count = 0
    for choice in itertools.product(range(3), repeat=space.n_layers):
        opts = red.opts_of(choice)
        x = space.one_hot(choice)
        ok = (choice[1] == choice[2]) and allowed[x.astype(bool)].all()
        assert (opts is not None) == ok
        if opts is not None:
            count += 1
            assert red.choice(opts) == list(choice)
            assert prog.value(opts) == pytest.approx(float(x @ G @ x), rel=1e-12, abs=1e-12)
            assert prog.fits(opts) == cons.admits(space, choice)
    assert count == 2 * 3 * 1 * 3  # l0: 2 widths, l1=l2: 3, l3 pinned, l4: 3


def test_an_impossible_budget_names_the_row_and_its_range_and_a_joint_one_says_so():
    space, G, s, bops, latency = instance(5)
    rows = three_budgets(space, bops, latency)
    low = float(bops.reshape(space.n_layers, -1).min(axis=1).sum())
    rows[1] = CostRow("bops", bops, low - 1, unit="BOPs", given="rel:-0.01")
    with pytest.raises(UsageError, match=r"bops budget .* is below the smallest possible bops .*feasible range"):
        solve_iqp(G, space, None, constraints=Constraints(rows))
    allowed = np.ones(space.n_options, bool)
    allowed[0:3] = [False, True, False]
    allowed[3:6] = [True, False, False]
    with pytest.raises(UsageError, match="tied layers l0, l1 share no allowed width"):
        solve_iqp(G, space, None, constraints=Constraints(rows[:1], allowed, [[0, 1]]))
    # each alone feasible, together not: size near its minimum and latency near its minimum
    # on a table where the narrowest width is the slowest
    lat = np.tile([3.0, 2.0, 1.0], space.n_layers)
    together = [size_row(space, int(np.ceil(space.min_bytes()))), CostRow("latency", lat, 1.0 * space.n_layers + 0.5, unit="ms")]
    with pytest.raises(UsageError, match="no choice meets every budget at once"):
        solve_iqp(G, space, None, constraints=Constraints(together), time_limit=30)
    with pytest.raises(UsageError, match="no choice meets every budget at once"):
        solve_ilp(s, space, None, constraints=Constraints(together), time_limit=30)


def test_binding_says_which_budget_stops_a_better_choice():
    space, G, s, bops, latency = instance(6)
    loose = [CostRow("latency", latency, float(latency.reshape(space.n_layers, -1).max(axis=1).sum()), unit="ms")]
    budget = int(space.min_bytes() + 0.3 * (space.max_bytes() - space.min_bytes()))
    r = solve_ilp(-np.abs(s) * np.tile([0, 1, 2], space.n_layers), space, budget, constraints=Constraints(loose))
    by = {c["name"]: c for c in r.constraints}
    assert by["size"]["binding"] and not by["latency"]["binding"]
    assert by["size"]["unit"] == "bytes" and by["size"]["value"] == r.decided_bytes and by["size"]["bound"] == budget


@pytest.mark.parametrize("psd", ["exact", "shift"])
def test_no_good_rows_give_the_k_best_choices_in_order(psd):
    """Solving again with Σ_{i in S} x_i <= L-1 for every earlier choice S walks the admitted
    choices in the order of x'Gx: the values are the K smallest of brute force."""
    import itertools

    space, G, _, bops, latency = instance(7, n_layers=4)
    budget = int(space.min_bytes() + 0.5 * (space.max_bytes() - space.min_bytes()))
    values = sorted(float(space.one_hot(c) @ G @ space.one_hot(c)) for c in itertools.product(range(3), repeat=4)
                    if space.fits(c, budget))
    cuts, seen = [], []
    for _ in range(5):
        r = solve_iqp(G, space, budget, psd=psd, constraints=Constraints(list(cuts)), time_limit=30)
        assert r.choice not in seen and r.optimal
        seen.append(r.choice)
        cuts.append(CostRow(f"_exclude{len(cuts)}", space.one_hot(r.choice), space.n_layers - 1))
    assert [float(space.one_hot(c) @ G @ space.one_hot(c)) for c in seen] == pytest.approx(values[:5], rel=1e-9, abs=1e-12)


def test_restricted_reduction_admits_exactly_the_choices_of_the_kept_options():
    """Reduction.restricted(keep) (what SCIP and Gurobi solve after HiGHS's root and probing):
    with ties and a mask, a choice of the space is admitted iff its reduced options are all kept,
    and its value in the restricted program is its value in the full one."""
    from itertools import product

    space, G, _, bops, latency = instance(4)
    allowed, ties = restrictions(space)
    red = Reduction(space, Constraints(three_budgets(space, bops, latency, f=(1.0, 1.0, 1.0)), allowed, ties))
    rng = np.random.default_rng(0)
    keep = rng.random(len(red.layer)) < 0.7
    for g in range(red.layer.max() + 1):  # at least one option per group
        keep[np.nonzero(red.layer == g)[0][0]] = True
    sub = Reduction.restricted(red, keep)
    full_prog, sub_prog = red.program(G), sub.program(G)
    seen = 0
    for choice in product(range(len(space.candidates)), repeat=space.n_layers):
        opts = red.opts_of(choice)
        if opts is None:
            assert sub.opts_of(choice) is None
            continue
        sub_opts = sub.opts_of(choice)
        assert (sub_opts is not None) == bool(keep[opts].all())
        if sub_opts is not None:
            seen += 1
            assert sub.choice(sub_opts) == list(choice)
            assert sub_prog.value(sub_opts) == pytest.approx(full_prog.value(opts), rel=1e-12, abs=1e-12)
    assert 0 < seen < sum(red.opts_of(c) is not None for c in product(range(3), repeat=space.n_layers))

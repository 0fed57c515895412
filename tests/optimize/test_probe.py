"""Reduced-cost fixing by probing (exact.probe_fixing), checked by enumerating every choice: an
option it removes is in no choice as good as the incumbent, and the bound it reports for the
removed options holds for every choice that uses one."""
from itertools import product

import numpy as np
import pytest

from clado_cli.optimize.exact import _highs, probe_fixing
from clado_cli.optimize.heuristic import OneHotProgram
from clado_cli.optimize.linearize import build, lagrangian_bound

from .test_exact import budget_at, clado_like

pytest.importorskip("highspy")


def _root_duals(model):
    h = _highs(model, integer=False, options={"solver": "simplex"})
    h.run()
    return np.asarray(h.getSolution().row_dual)


@pytest.mark.parametrize("seed", range(4))
def test_probing_removes_only_options_that_every_choice_as_good_as_the_incumbent_avoids(seed):
    space, G = clado_like(seed, 6)
    budget = budget_at(space, 0.3)
    prog = OneHotProgram(G, space.option_layers(), np.outer(space.numel, space.candidates).ravel(), 8 * budget)
    B = len(space.candidates)
    choices = np.array([np.arange(space.n_layers) * B + np.array(c) for c in product(range(B), repeat=space.n_layers)])
    choices = choices[[prog.fits(c) for c in choices]]
    values = np.array([prog.value(c) for c in choices])
    order = np.argsort(values)
    model = build(prog)
    pi = _root_duals(model)
    rng = np.random.default_rng(seed)
    removed_any = 0
    # the root LP's multipliers, and perturbed ones (the Lagrangian bound holds for any multipliers)
    for multipliers in (pi, pi * (1 + 0.05 * rng.standard_normal(len(pi))), pi + 0.01 * rng.standard_normal(len(pi)) * np.abs(pi).max()):
        root, d = lagrangian_bound(model, multipliers)
        assert root <= values.min() + 1e-9 * abs(values.min())
        # incumbents: the optimum and choices further up (a weaker incumbent removes less)
        for rank in (0, len(order) // 20, len(order) // 5):
            incumbent = choices[order[rank]]
            value = values[order[rank]]
            keep, removed_bound, rounds = probe_fixing(prog, d, root, value, incumbent)
            assert keep[incumbent].all() and rounds >= 1
            uses_removed = (~keep[choices]).any(axis=1)
            removed_any += int((~keep).sum())
            if uses_removed.any():
                assert values[uses_removed].min() > value
                assert values[uses_removed].min() >= removed_bound - 1e-9 * abs(removed_bound)
            else:
                assert removed_bound == np.inf or (~keep).any()
    assert removed_any > 0  # the test exercises removal


def test_probing_removes_more_than_the_options_own_reduced_costs():
    """On a program like the measured ones, the root LP's reduced costs of the options alone remove
    fewer options than probing their pairs (what made the root formulations fast, docs/solvers.md)."""
    space, G = clado_like(11, 12)
    budget = budget_at(space, 0.2)
    prog = OneHotProgram(G, space.option_layers(), np.outer(space.numel, space.candidates).ravel(), 8 * budget)
    model = build(prog)
    root, d = lagrangian_bound(model, _root_duals(model))
    from clado_cli.optimize.heuristic import incumbent

    opts = incumbent(prog, time_limit=0.5)
    value = prog.value(opts)
    own = int((root + d[: model.n_x] > value).sum())
    keep, _, _ = probe_fixing(prog, d, root, value, opts)
    assert int((~keep).sum()) > own

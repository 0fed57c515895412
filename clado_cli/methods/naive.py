"""naive: CLADO's single-option terms only, cross-layer terms dropped (the ablation); an ILP
over diag(G) on CLADO's cache (docs/methods.md, "naive")."""
from __future__ import annotations

from ..optimize import Budget, solve_ilp
from .base import Method, SolveOptions, register
from .clado import pair_sensitivities


@register
class Naive(Method):
    name = "naive"
    help = "naive: CLADO's single-option terms only (the ablation); reads the CLADO cache."
    program = "ILP"
    marker = "v"
    reads = "clado"

    def make_sensitivities(self, base):
        return pair_sensitivities(base)

    def solve(self, sens, budget: Budget, opts: SolveOptions):
        import numpy as np

        res = solve_ilp(np.diag(sens.G), sens.space, budget.bytes, solver=opts.solver, time_limit=opts.time_limit,
                        constraints=opts.constraints)
        return res, float(sens.singles @ sens.space.one_hot(res.choice))

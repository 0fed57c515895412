"""MPQCO: per-option first-order sensitivities from the true-class logit's gradient, and an
integer linear program (docs/methods.md, "MPQCO")."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..optimize import Budget, solve_ilp
from ..store import Stored
from .base import Method, Sensitivities, SolveOptions, register, timed


@dataclass
class LinearSensitivities(Sensitivities):
    """One value s(l, b) per option; the program minimizes s·x."""

    s: np.ndarray = field(repr=False, default=None)


def solve_linear(sens: LinearSensitivities, budget: Budget, opts: SolveOptions):
    res = solve_ilp(sens.s, sens.space, budget.bytes, solver=opts.solver, time_limit=opts.time_limit,
                    constraints=opts.constraints)
    return res, float(sens.s @ sens.space.one_hot(res.choice))


@register
class Mpqco(Method):
    name = "mpqco"
    help = "MPQCO: per-sample gradients of the true-class logit, sensitivity per option, per batch."
    program = "ILP"
    marker = "s"
    stored = Stored("mpqco", "DELTAL", "MPQCO sensitivities")
    prep_flags = ("engine",)
    engines = ("fast", "reference")

    def work_per_batch(self, session) -> int:
        return session.cfg.data.bs

    def runner(self, session, engine):
        """The fast engine's weight deltas ΔW(l, b), computed once per run."""
        if engine != "fast":
            return None, engine, None
        from ..prep.mpqco import weight_deltas

        return weight_deltas(session.qmodel), engine, None

    def compute(self, session, x, y, k, engine, runner, tick=None):
        from ..prep.mpqco import mpqco_fast, mpqco_reference

        model = session.float_model.requires_grad_(True)
        if engine == "fast":
            return mpqco_fast(model, session.qmodel, x, y, tick=tick, deltas=runner)
        return mpqco_reference(model, session.qmodel, x, y, tick=tick)

    def compute_part(self, session, x, y, k, rank, size, engine, runner):
        """This rank's samples, as unnormalized sums."""
        import torch

        from ..prep.mpqco import mpqco_fast, mpqco_reference

        qm = session.qmodel
        idx = torch.arange(rank, x.shape[0], size, device=x.device)
        if len(idx) == 0:
            return {"s_sum": np.zeros((len(qm.decided), len(qm.candidates)))}
        model = session.float_model.requires_grad_(True)
        if engine == "fast":
            part = mpqco_fast(model, qm, x[idx], y[idx], deltas=runner)["s"]
        else:
            part = mpqco_reference(model, qm, x[idx], y[idx])["s"]
        return {"s_sum": part * 2 * len(idx)}

    def finish_part(self, session, summed):
        return {"s": summed["s_sum"] / (2 * session.cfg.data.bs)}

    def estimate(self, session, x, y, engine, runner):
        """fast: the real work of one batch (one forward, one backward, one layer call per
        option); reference: its per-sample loop on a quarter of the batch (at least 8
        samples), scaled to the batch. Both after a warm-up call on two samples."""
        N = x.shape[0]
        n = N if engine == "fast" else min(N, max(8, -(-N // 4)))
        self.compute(session, x[:2], y[:2], 0, engine, runner)   # first-call costs, which a run pays once
        return timed(lambda: self.compute(session, x[:n], y[:n], 0, engine, runner)) * N / n

    def estimate_sizes(self, session):
        L, B = len(session.plan.decided), len(session.cfg.quant.pairs())
        return 8 * L * B + 300, {"per_sample_gradients": session.cfg.data.bs}

    def expected_arrays(self, space):
        return {"s": (space.n_layers, len(space.candidates))}

    def make_sensitivities(self, base):
        s = base.values["s"].reshape(-1)
        se = base.errors["s"].reshape(-1) if base.errors is not None else None
        return LinearSensitivities(**{**vars(base), "singles": s, "singles_se": se}, s=s)

    def solve(self, sens, budget, opts):
        return solve_linear(sens, budget, opts)

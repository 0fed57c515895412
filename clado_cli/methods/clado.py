"""CLADO: pairwise cross-layer sensitivities (Ltilde) and the integer quadratic program
(docs/methods.md, "CLADO" and "The CLADO program")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np

from ..console import warn
from ..errors import InputError
from ..optimize import Budget, OptionSpace, g_from_ltilde, solve_iqp
from ..store import Stored
from .base import Method, Sensitivities, SolveOptions, extrapolate_rows, probe_rows, register, timed


@dataclass
class PairSensitivities(Sensitivities):
    """Ltilde as cached, and the program's matrix G built from it."""

    Ltilde: np.ndarray = field(repr=False, default=None)
    G: np.ndarray = field(repr=False, default=None)

    def negative_words(self) -> str:
        return "single-option loss deltas"


def pair_sensitivities(base: Sensitivities) -> PairSensitivities:
    Lt = base.values["Ltilde"]
    P = base.space.n_options
    if Lt.shape != (P, P):
        raise InputError(f"the cached CLADO sensitivities have shape {Lt.shape}, expected {(P, P)}")
    fields = {**vars(base), "singles": np.diag(Lt).copy()}
    if base.errors is not None:
        fields["singles_se"] = np.diag(base.errors["Ltilde"]).copy()
    return PairSensitivities(**fields, Ltilde=Lt, G=g_from_ltilde(Lt, base.space))


@register
class Clado(Method):
    name = "clado"
    help = "CLADO: Ltilde (float loss, every single option, every cross-layer pair) per batch."
    program = "IQP"
    marker = "o"
    stored = Stored("clado", "Ltilde", "CLADO sensitivities")
    prep_flags = ("engine", "stack")
    uses_psd = True
    engines = ("fast", "reference")

    def work_per_batch(self, session) -> int:
        from ..prep.clado import measurement_count

        return measurement_count(len(session.plan.decided), len(session.cfg.quant.pairs()))

    def runner(self, session, engine):
        if engine != "fast":
            return None, engine, None
        from ..prep.clado import make_runner

        stack = session.cfg.prep.stack
        runner, why = make_runner(session.qmodel, max_batch=None if stack == "auto" else stack)
        if runner is None:
            return None, "reference", f"the model cannot be traced by torch.fx ({why}); CLADO prep uses the reference engine"
        return runner, engine, None

    def compute(self, session, x, y, k, engine, runner, tick=None):
        from ..prep.clado import clado_fast, clado_reference

        loss = session.cfg.prep.loss
        if runner is not None:
            return clado_fast(session.qmodel, x, y, loss, tick=tick, runner=runner)
        return clado_reference(session.qmodel, x, y, loss, tick=tick)

    def compute_part(self, session, x, y, k, rank, size, engine, runner):
        """The option pairs whose first layer is this rank's."""
        from ..prep.clado import clado_fast, clado_reference

        qm, loss = session.qmodel, session.cfg.prep.loss
        rows = [l for l in range(len(qm.decided)) if l % size == rank]
        if runner is not None:
            vals = clado_fast(qm, x, y, loss, runner=runner, rows=rows)
        else:
            vals = clado_reference(qm, x, y, loss, rows=rows)
        return {"Ltilde": vals["Ltilde"], "L0": np.float64(vals["L0"] if rank == 0 else 0.0)}

    def estimate(self, session, x, y, engine, runner):
        """The real engine, stacking included: the FastRunner times row 0's passes at every
        layer (prep/clado/estimate.py); the reference engine and the node-by-node runner run
        the rows of `probe_rows` and no row (what every batch does once), extrapolated to all
        rows by each row's count of forward passes."""
        from ..prep.clado import FastRunner, clado_fast, clado_reference
        from ..prep.clado.estimate import fast_seconds_per_batch

        qm, loss = session.qmodel, session.cfg.prep.loss
        L = len(session.plan.decided)
        if isinstance(runner, FastRunner):
            return fast_seconds_per_batch(qm, runner, x, y, loss)

        def rows(rs):
            if runner is not None:
                return clado_fast(qm, x, y, loss, runner=runner, rows=rs)
            return clado_reference(qm, x, y, loss, rows=rs)

        B = len(session.cfg.quant.weight_candidates)
        probed = probe_rows(L)
        fixed = timed(lambda: rows([]))
        # row l: B singles and B² pairs with each later layer, one forward pass each
        weights = [B + B * B * (L - 1 - l) for l in range(L)]
        return extrapolate_rows(fixed, timed(lambda: rows(probed)), probed, weights)

    def estimate_sizes(self, session):
        from ..prep.clado import measurement_count

        L, B = len(session.plan.decided), len(session.cfg.quant.pairs())
        return 8 * (L * B) ** 2 + 300, {"forward_passes": measurement_count(L, B)}

    def summary_extra(self, runner) -> Dict[str, Any]:
        # perturbations stacked per pass at each decided layer by the fast engine (None when it
        # computed no batch)
        return {"stack": getattr(runner, "stats", {}).get("stack_per_layer")}

    def after_prep(self, combined):
        neg = int((np.diag(combined["Ltilde"]) < 0).sum())
        if not neg:
            return {"negative_singles": None}
        warn(f"{neg} single-option loss deltas are negative (quantizing those options lowered the "
             f"loss on the sensitivity set); the release's no-budget sanity check fails on such estimates")
        return {"negative_singles": neg}

    def expected_arrays(self, space: OptionSpace) -> Dict[str, Tuple[int, ...]]:
        P = space.n_options
        return {"Ltilde": (P, P), "L0": ()}

    def make_sensitivities(self, base):
        return pair_sensitivities(base)

    def solve(self, sens, budget: Budget, opts: SolveOptions):
        res = solve_iqp(sens.G, sens.space, budget.bytes, psd=opts.psd, solver=opts.solver, time_limit=opts.time_limit,
                        constraints=opts.constraints)
        x = sens.space.one_hot(res.choice)
        return res, float(x @ sens.G @ x) / 2

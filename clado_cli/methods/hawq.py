"""HAWQ-V3: Hutchinson traces of each decided layer's Hessian block, sensitivity
s(l, b) = t_l / numel(W_l) · ‖Q_b(W_l) − W_l‖², and an integer linear program
(docs/methods.md, "HAWQ-V3")."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..store import Stored
from .base import Method, SolveOptions, extrapolate_rows, probe_rows, register, timed
from .mpqco import LinearSensitivities, solve_linear


def hawq_sensitivity(traces: np.ndarray, qerr_sq: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """s(l, b) = t_l / numel(W_l) · ‖Q_b(W_l) − W_l‖²."""
    return (traces / numel)[:, None] * qerr_sq


@dataclass
class TraceSensitivities(LinearSensitivities):
    traces: np.ndarray = field(repr=False, default=None)


@register
class Hawq(Method):
    name = "hawq"
    help = "HAWQ-V3: Hutchinson trace of each decided layer's Hessian block, per batch."
    program = "ILP"
    marker = "^"
    stored = Stored("hawq", "HAWQ_DELTAL", "HAWQ-V3 traces")
    prep_flags = ("estimator",)

    def check_options(self, cfg):
        """A weight Hessian says nothing about an input's quantization: no s(l, (w, a)) (docs/methods.md,
        "HAWQ-V3")."""
        if cfg.quant.act_options:
            raise UsageError(f"HAWQ-V3 is not defined for options that differ in activation width "
                             f"({', '.join(cfg.quant.option_label(w, a) for w, a in cfg.quant.pairs())}): its "
                             f"sensitivity is a weight Hessian's, which says nothing about activations; use clado, "
                             f"naive or mpqco, or one activation width")

    def cache_params(self, cfg):
        p = cfg.prep
        return {"estimator": p.hawq_estimator, "max_iter": p.hawq_max_iter, "tol": p.hawq_tol,
                "probe_seed": cfg.data.seed}

    def work_per_batch(self, session) -> int:
        return len(session.plan.decided)

    def batch_meta(self, cfg, engine):
        return {"engine": cfg.prep.hawq_estimator}

    def compute(self, session, x, y, k, engine, runner, tick=None):
        from ..prep.hawq import hawq_traces

        cfg = session.cfg
        p = cfg.prep
        return hawq_traces(session.float_model.requires_grad_(True), session.qmodel, x, y, p.loss, p.hawq_max_iter,
                           p.hawq_tol, seed=cfg.data.seed * 1_000_003 + k, estimator=p.hawq_estimator, tick=tick)

    def compute_part(self, session, x, y, k, rank, size, engine, runner):
        """The whole batch on rank 0: its probes are one random stream, so splitting would
        change the numbers."""
        if rank == 0:
            return self.compute(session, x, y, k, engine, runner)
        L, B = len(session.plan.decided), len(session.cfg.quant.pairs())
        return {"traces": np.zeros(L), "iterations": np.zeros(L), "qerr_sq": np.zeros((L, B)), "numel": np.zeros(L)}

    def finish_part(self, session, summed):
        return {**summed, "iterations": summed["iterations"].astype(np.int64),
                "numel": summed["numel"].astype(np.int64)}

    def estimate(self, session, x, y, engine, runner):
        """per-layer: the real probes of the layers of `probe_rows` (each until it converges,
        as prep runs them) and of no layer (the forward and the graph of gradients every batch
        builds once), extrapolated to all layers; all-layers: the real work of one batch (one
        probe stream for every layer)."""
        from ..prep.hawq import hawq_traces

        L, p = len(session.plan.decided), session.cfg.prep

        def run(layers=None):
            hawq_traces(session.float_model.requires_grad_(True), session.qmodel, x, y, p.loss, p.hawq_max_iter,
                        p.hawq_tol, seed=session.cfg.data.seed * 1_000_003, estimator=p.hawq_estimator,
                        layers=layers)

        if p.hawq_estimator != "per-layer":
            return timed(run)
        probed = probe_rows(L)
        fixed = timed(lambda: run([]))
        return extrapolate_rows(fixed, timed(lambda: run(probed)), probed, [1.0] * L)

    def estimate_sizes(self, session):
        L, B = len(session.plan.decided), len(session.cfg.quant.pairs())
        p = session.cfg.prep
        passes = p.hawq_max_iter * (L if p.hawq_estimator == "per-layer" else 1)
        return 8 * L * (B + 3) + 300, {"hessian_vector_products_at_most": passes}

    def cheaper_hint(self, session, forward_seconds, batches, seconds):
        """Per-layer probes cost L times the all-layers ones: name the saving past an hour."""
        p = session.cfg.prep
        if p.hawq_estimator != "per-layer" or seconds < 3600:
            return None
        # one probe stream for all layers instead of one per layer: about 1/L of the time
        fast = seconds / max(len(session.plan.decided), 1)
        return (f"the per-layer estimator would take about {seconds / 3600:.1f} h; --estimator all-layers takes "
                f"about {fast / 60:.0f} min (one probe for all layers, noisier traces: docs/performance.md)")

    def expected_arrays(self, space):
        L, B = space.n_layers, len(space.candidates)
        return {"traces": (L,), "iterations": (L,), "qerr_sq": (L, B), "numel": (L,)}

    def make_sensitivities(self, base):
        if base.space.act_bits is not None:
            raise UsageError("HAWQ-V3 is not defined for options that differ in activation width (a weight "
                             "Hessian says nothing about activations)")
        v = base.values
        numel = np.array(base.space.numel, dtype=np.float64)
        s = hawq_sensitivity(v["traces"], v["qerr_sq"], numel).reshape(-1)
        # the quantization errors are the same in every batch: the traces carry the noise
        se = hawq_sensitivity(base.errors["traces"], v["qerr_sq"], numel).reshape(-1) \
            if base.errors is not None else None
        return TraceSensitivities(**{**vars(base), "singles": s, "singles_se": se}, s=s, traces=v["traces"])

    def solve(self, sens, budget, opts: SolveOptions):
        return solve_linear(sens, budget, opts)

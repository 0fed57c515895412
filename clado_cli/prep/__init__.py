"""`prep`: compute sensitivities batch by batch into the fingerprinted cache.

    run_prep(session, "clado", sb=0, eb=3)  ->  summary dict

Batches already cached are skipped (resume); `force` recomputes them. Two processes on one
cache split the work: each batch is claimed with a lock before it is computed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..console import progress, warn
from ..errors import UsageError
from .cache import Cache
from .memory import peak_report, reset_peak
from .clado import clado_fast, clado_reference, make_runner, measurement_count

METHODS = ("clado", "mpqco", "hawq")


def method_params(session, method: str) -> Dict[str, Any]:
    p = session.cfg.prep
    if method == "hawq":
        return {"estimator": p.hawq_estimator, "max_iter": p.hawq_max_iter, "tol": p.hawq_tol,
                "probe_seed": session.cfg.data.seed}
    return {}


def work_per_batch(session, method: str) -> int:
    L, B = len(session.plan.decided), len(session.cfg.quant.weight_candidates)
    if method == "clado":
        return measurement_count(L, B)
    if method == "mpqco":
        return session.cfg.data.bs
    return L


def prep_runner(session, method: str, engine: str):
    """What the fast engines reuse across every batch of a run, built once per session: the
    CLADO FastRunner (None when the model cannot be traced: reference engine; the reason
    is kept under "clado_refused"), the MPQCO weight deltas ΔW(l, b) (B copies of the decided
    weights). None for everything else."""
    if engine != "fast" or method not in ("clado", "mpqco"):
        return None
    runners = session.__dict__.setdefault("_prep_runners", {})
    if method not in runners:
        qm = session.qmodel
        if method == "clado":
            stack = session.cfg.prep.stack
            runners[method], runners["clado_refused"] = make_runner(qm, max_batch=None if stack == "auto" else stack)
        else:
            from .mpqco import weight_deltas

            runners[method] = weight_deltas(qm)
    return runners[method]


def compute_batch(session, method: str, k: int, engine: str = "fast",
                  tick: Optional[Callable[[int], None]] = None, runner=None) -> Dict[str, np.ndarray]:
    """The sensitivities of one batch (no caching)."""
    qm = session.qmodel
    x, y = session.sensitivity_batch(k)
    cfg = session.cfg
    if method == "clado":
        if engine == "fast" and runner is not None:
            return clado_fast(qm, x, y, cfg.prep.loss, tick=tick, runner=runner)
        return clado_reference(qm, x, y, cfg.prep.loss, tick=tick)
    if method == "mpqco":
        from .mpqco import mpqco_fast, mpqco_reference

        if engine == "fast":
            return mpqco_fast(session.float_model, qm, x, y, tick=tick, deltas=runner)
        return mpqco_reference(session.float_model, qm, x, y, tick=tick)
    if method == "hawq":
        from .hawq import hawq_traces

        p = cfg.prep
        return hawq_traces(session.float_model, qm, x, y, cfg.prep.loss, p.hawq_max_iter, p.hawq_tol,
                           seed=cfg.data.seed * 1_000_003 + k, estimator=p.hawq_estimator, tick=tick)
    raise UsageError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def run_prep(session, method: str, sb: int, eb: int, force: bool = False, engine: Optional[str] = None,
             dry_run: bool = False, shard: Optional[tuple] = None, only: Optional[List[int]] = None) -> Dict[str, Any]:
    """Compute batches sb..eb of one method into the cache. `shard=(K, N)` keeps every N-th
    batch starting at the K-th; `only` restricts the work to the given batches."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    engine = engine or session.cfg.prep.engine
    session.check_batch_range(sb, eb)
    ks = list(range(sb, eb + 1))
    if shard is not None:
        idx, count = shard
        ks = [k for i, k in enumerate(ks) if i % count == idx]
    if only is not None:
        ks = [k for k in ks if k in set(only)]
    if dry_run:
        return plan_work(session, method, ks, engine)
    cache: Cache = session.cache
    cache.ensure()
    params = method_params(session, method)
    if force:
        cache.forget_params(method)
    cache.check_params(method, params)
    qm = session.qmodel  # calibrates (or loads the cached calibration) before any timing
    runner = prep_runner(session, method, engine)
    if method == "clado" and engine == "fast":
        if runner is None:
            why = session.__dict__["_prep_runners"]["clado_refused"]
            warn(f"the model cannot be traced by torch.fx ({why}); CLADO prep uses the reference engine")
            engine = "reference"
    if method == "mpqco" or method == "hawq":
        session.float_model.requires_grad_(True)
    per_batch = work_per_batch(session, method)
    computed: List[int] = []
    skipped: List[int] = []
    deferred: List[int] = []
    t0 = time.time()
    reset_peak(session.device)
    with progress() as bar:
        overall = bar.add_task(f"{method} batches {sb}..{eb}", total=len(ks))
        inner = bar.add_task("batch", total=per_batch, visible=False)

        def one(k: int, wait: bool) -> None:
            if cache.has_batch(method, k) and not force:
                skipped.append(k)
                bar.advance(overall)
                return
            with cache.claim(method, k, wait=wait) as held:
                if not held:
                    deferred.append(k)
                    return
                if cache.has_batch(method, k) and (not force or k in computed):
                    skipped.append(k)  # another process finished it while we waited
                    bar.advance(overall)
                    return
                bar.reset(inner, total=per_batch, visible=True, description=f"{method} batch {k}")
                tb = time.time()
                values = compute_batch(session, method, k, engine, tick=lambda n: bar.advance(inner, n),
                                       runner=runner)
                cache.write_batch(method, k, values, n=session.cfg.data.bs,
                                  meta={"engine": engine if method != "hawq" else session.cfg.prep.hawq_estimator,
                                        "seconds": round(time.time() - tb, 3)})
                computed.append(k)
                bar.advance(overall)

        for k in ks:
            one(k, wait=False)
        for k in list(deferred):
            deferred.remove(k)
            one(k, wait=True)
    seconds = time.time() - t0
    negative = None
    if method == "clado" and computed + skipped:
        vals, _, _ = cache.combine(method, ks)
        neg = int((np.diag(vals["Ltilde"]) < 0).sum())
        if neg:
            negative = neg
            warn(f"{neg} single-option loss deltas are negative (quantizing those options lowered the "
                 f"loss on the sensitivity set); the release's no-budget sanity check fails on such estimates")
    return {
        "method": method, "fingerprint": cache.fingerprint, "cache": str(cache.root),
        "engine": engine if method in ("clado", "mpqco") else None,
        # perturbations stacked per pass at each decided layer by the CLADO fast engine
        # (None when it computed no batch)
        "stack": getattr(runner, "stats", {}).get("stack_per_layer") if method == "clado" else None,
        "batches": ks, "computed": computed, "skipped": skipped,
        "files": [str(cache.batch_path(method, k)) for k in ks],
        "seconds": round(seconds, 3), "negative_singles": negative,
        "memory": peak_report(session.device),
    }


def compute_batch_part(session, method: str, k: int, rank: int, size: int) -> Dict[str, np.ndarray]:
    """Rank `rank`'s share of one batch, as arrays that sum (over ranks) to the batch's values
    before `finish_part`. CLADO: the option pairs whose first layer is this rank's; MPQCO: this
    rank's samples (unnormalized sums); HAWQ: the whole batch on rank 0 (its probes are one
    random stream, so splitting would change the numbers)."""
    qm = session.qmodel
    x, y = session.sensitivity_batch(k)
    cfg = session.cfg
    if method == "clado":
        rows = [l for l in range(len(qm.decided)) if l % size == rank]
        runner = prep_runner(session, method, cfg.prep.engine)
        if runner is not None:
            vals = clado_fast(qm, x, y, cfg.prep.loss, runner=runner, rows=rows)
        else:
            vals = clado_reference(qm, x, y, cfg.prep.loss, rows=rows)
        return {"Ltilde": vals["Ltilde"], "L0": np.float64(vals["L0"] if rank == 0 else 0.0)}
    if method == "mpqco":
        from .mpqco import mpqco_fast, mpqco_reference

        L, B = len(qm.decided), len(qm.candidates)
        idx = torch.arange(rank, x.shape[0], size, device=x.device)
        if len(idx) == 0:
            return {"s_sum": np.zeros((L, B))}
        model = session.float_model.requires_grad_(True)
        if cfg.prep.engine == "fast":
            part = mpqco_fast(model, qm, x[idx], y[idx], deltas=prep_runner(session, method, "fast"))["s"]
        else:
            part = mpqco_reference(model, qm, x[idx], y[idx])["s"]
        return {"s_sum": part * 2 * len(idx)}
    if method == "hawq":
        if rank == 0:
            return compute_batch(session, method, k)
        L, B = len(qm.decided), len(qm.candidates)
        return {"traces": np.zeros(L), "iterations": np.zeros(L), "qerr_sq": np.zeros((L, B)), "numel": np.zeros(L)}
    raise UsageError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def finish_part(session, method: str, summed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if method == "mpqco":
        return {"s": summed["s_sum"] / (2 * session.cfg.data.bs)}
    if method == "hawq":
        return {**summed, "iterations": summed["iterations"].astype(np.int64), "numel": summed["numel"].astype(np.int64)}
    return summed


def plan_work(session, method: str, ks: List[int], engine: str) -> Dict[str, Any]:
    """--dry-run: what would be computed, with a time estimate from one timed probe."""
    cache = session.cache
    todo = [k for k in ks if not cache.has_batch(method, k)]
    L, B = len(session.plan.decided), len(session.cfg.quant.weight_candidates)
    x, _ = session.sensitivity_batch(ks[0])
    model = session.float_model
    with torch.no_grad():
        model(x)
        t = time.time()
        model(x)
        fwd = time.time() - t
    if method == "clado":
        passes = measurement_count(L, B)
        est = passes * fwd * (1.3 if engine == "reference" else 0.3)  # fast: measured 0.17-0.27x of reference
        per_file = 8 * (L * B) ** 2 + 300
        work = {"forward_passes": passes}
    elif method == "mpqco":
        passes = session.cfg.data.bs
        est = passes * fwd * 3 / session.cfg.data.bs * 2
        per_file = 8 * L * B + 300
        work = {"per_sample_gradients": passes}
    else:
        iters = session.cfg.prep.hawq_max_iter
        passes = iters * (L if session.cfg.prep.hawq_estimator == "per-layer" else 1)
        est = passes * fwd * 4
        per_file = 8 * L * (B + 3) + 300
        work = {"hessian_vector_products_at_most": passes}
    return {
        "method": method, "dry_run": True, "fingerprint": session.fingerprint,
        "cache": str(cache.root), "batches": ks, "to_compute": todo,
        "already_cached": [k for k in ks if k not in todo],
        "per_batch": work, "forward_seconds_probe": round(fwd, 5),
        "estimated_seconds": round(est * len(todo), 2),
        "estimated_cache_bytes": per_file * len(todo),
    }

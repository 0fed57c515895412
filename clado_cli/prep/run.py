"""One prep run: compute a method's sensitivities batch by batch into the fingerprinted cache.

    PrepRun(session, "clado", sb=0, eb=3).run()  ->  PrepSummary

A run owns its setup (cache directory and method settings, calibrated quantizers, the
method's per-run state such as the CLADO fast runner, built once) and its batch schedule:

- local: every batch of sb..eb not cached yet (or all with `force`), each claimed with a
  file lock first, so two processes on one cache split the work (resume after a kill is the
  same: finished batches are files, unfinished ones are recomputed);
- `shard=(K, N)`: every N-th batch from the K-th (job arrays; `clado cache merge` joins them);
- `only=[...]`: the given batches (torchrun ranks, whole batches each);
- `run_split`: every batch split inside across ranks, with the rank's parts summed by a
  reduce function passed in (torch.distributed's all_reduce under torchrun).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..console import log, progress, warn
from ..errors import InputError, UsageError
from ..methods import Method, combine_checked, get_method, prep_method_names
from .memory import peak_report, reset_peak

Reduce = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


@dataclass
class PrepSummary:
    """What a prep run did (the JSON `clado prep --json` prints)."""

    method: str
    fingerprint: str
    cache: str
    engine: Optional[str]
    batches: List[int]
    computed: List[int]
    skipped: List[int]
    files: List[str]
    seconds: float
    memory: Dict[str, Any]
    negative_singles: Optional[int] = None
    stack: Optional[Any] = None
    ranks: Optional[int] = None
    split: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if self.ranks is None:
            d.pop("ranks")
            d.pop("split")
        return d


def check_finite_values(values: Dict[str, np.ndarray], what: str) -> None:
    """Computed numbers that are NaN or inf are never cached: name them instead."""
    for name, a in values.items():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise InputError(f"{what}: {int(np.sum(~np.isfinite(a)))} values of {name} are NaN or inf (the model's "
                             f"loss is not finite on this batch with some option applied); nothing was cached")


def prep_method(name: str) -> Method:
    m = get_method(name)
    if not m.preppable:
        raise UsageError(f"{name} has no prep of its own (it reads the {m.source} cache: run clado prep {m.source}); "
                         f"prep methods: {', '.join(prep_method_names())}")
    return m


class PrepRun:
    def __init__(self, session, method: str, sb: int, eb: int, force: bool = False, engine: Optional[str] = None,
                 shard: Optional[tuple] = None):
        self.session = session
        self.method = prep_method(method)
        self.sb, self.eb, self.force = sb, eb, force
        self.engine = self.method.engine_used(session.cfg, engine)
        self.method.check_options(session.cfg)
        session.check_batch_range(sb, eb)
        ks = list(range(sb, eb + 1))
        if shard is not None:
            idx, count = shard
            ks = [k for i, k in enumerate(ks) if i % count == idx]
        self.ks = ks
        self.runner = None
        self._ready = False

    @property
    def kind(self):
        return self.method.stored

    @property
    def cache(self):
        return self.session.cache

    def todo(self) -> List[int]:
        """The batches of this run still to compute."""
        return [k for k in self.ks if self.force or not self.cache.has_batch(self.kind, k)]

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, params: bool = True) -> "PrepRun":
        """Cache directory, method settings (`params`: check and record them; one process of
        several does), calibrated quantizers and the per-run state, once."""
        if self._ready:
            return self
        cache = self.cache
        cache.ensure()
        if params:
            if self.force:
                cache.forget_params(self.kind)
            cache.check_params(self.kind, self.method.cache_params(self.session.cfg))
        self.session.qmodel  # noqa: B018  calibrates (or loads the cached calibration) before any timing
        if params and (self.cache.load_layer_costs() is None or self.cache.load_act_elements() is None):
            self.cache.save_layer_costs(self.session.layer_macs, self.session.layer_act_elements)
        self.runner, engine, why = self.method.runner(self.session, self.engine)
        if why:
            warn(why)
        self.engine = engine
        self._ready = True
        return self

    # -- whole batches ----------------------------------------------------------------------------
    def run(self, only: Optional[Sequence[int]] = None) -> PrepSummary:
        """Compute the batches of the schedule (or `only` those) not cached yet, claiming each."""
        self.setup()
        ks = self.ks if only is None else [k for k in self.ks if k in set(only)]
        cache, kind, force = self.cache, self.kind, self.force
        computed: List[int] = []
        skipped: List[int] = []
        deferred: List[int] = []
        per_batch = self.method.work_per_batch(self.session)
        t0 = time.time()
        reset_peak(self.session.device)
        with progress() as bar:
            overall = bar.add_task(f"{self.method.name} batches {self.sb}..{self.eb}", total=len(ks))
            inner = bar.add_task("batch", total=per_batch, visible=False)

            def one(k: int, wait: bool) -> None:
                if cache.has_batch(kind, k) and not force:
                    skipped.append(k)
                    bar.advance(overall)
                    return
                with cache.claim(kind, k, wait=wait) as held:
                    if not held:
                        deferred.append(k)
                        return
                    if cache.has_batch(kind, k) and (not force or k in computed):
                        skipped.append(k)  # another process finished it while we waited
                        bar.advance(overall)
                        return
                    bar.reset(inner, total=per_batch, visible=True, description=f"{self.method.name} batch {k}")
                    tb = time.time()
                    values = self.compute(k, tick=lambda n: bar.advance(inner, n))
                    self._write(k, values, time.time() - tb, self.method.batch_meta(self.session.cfg, self.engine))
                    computed.append(k)
                    bar.advance(overall)

            for k in ks:
                one(k, wait=False)
            for k in list(deferred):
                deferred.remove(k)
                who = cache.holder(kind, k)
                if who and not cache.has_batch(kind, k):
                    since = time.strftime("%H:%M:%S", time.localtime(float(who.get("since", 0))))
                    log(f"batch {k} is being computed by process {who.get('pid')} on {who.get('host')} since "
                        f"{since}; waiting for it (a stopped process holds it until it resumes or ends)")
                one(k, wait=True)
        return self._summary(ks, computed, skipped, time.time() - t0)

    def compute(self, k: int, tick=None) -> Dict[str, np.ndarray]:
        """The values of batch k (no caching)."""
        self.setup()
        x, y = self.session.sensitivity_batch(k)
        values = self.method.compute(self.session, x, y, k, self.engine, self.runner, tick=tick)
        check_finite_values(values, f"batch {k} of the {self.kind.label}")
        return values

    # -- batches split across ranks ------------------------------------------------------------
    def run_split(self, ks: Sequence[int], rank: int, size: int, reduce: Reduce, write: bool) -> PrepSummary:
        """Every batch of `ks` split inside across `size` ranks; `reduce` sums the parts over
        the ranks (the parts are disjoint, so the sum is exact); the writer writes the file."""
        self.setup(params=write)
        t0 = time.time()
        reset_peak(self.session.device)
        for k in ks:
            tb = time.time()
            x, y = self.session.sensitivity_batch(k)
            part = self.method.compute_part(self.session, x, y, k, rank, size, self.engine, self.runner)
            summed = reduce(part)
            check_finite_values(summed, f"batch {k} of the {self.kind.label}")
            if write:
                self._write(k, self.method.finish_part(self.session, summed), time.time() - tb,
                            {"engine": f"distributed x{size}"})
        return self._summary(self.ks, list(ks), [k for k in self.ks if k not in ks], time.time() - t0,
                             check=False)

    # -- internals ------------------------------------------------------------------------------
    def _write(self, k: int, values: Dict[str, np.ndarray], seconds: float, meta: Dict[str, Any]) -> None:
        self.cache.write_batch(self.kind, k, values, n=self.session.cfg.data.bs,
                               meta={**meta, "seconds": round(seconds, 3)})

    def _summary(self, ks, computed, skipped, seconds, check: bool = True) -> PrepSummary:
        after = {"negative_singles": None}
        if check and (computed or skipped) and self.method.after_prep is not None:
            vals = combine_checked(self.cache, self.method, ks)[0]
            after = self.method.after_prep(vals)
        extra = self.method.summary_extra(self.runner)
        return PrepSummary(
            method=self.method.name, fingerprint=self.cache.fingerprint, cache=str(self.cache.root),
            engine=self.engine, batches=list(ks), computed=computed, skipped=skipped,
            files=[str(self.cache.batch_path(self.kind, k)) for k in ks], seconds=round(seconds, 3),
            memory=peak_report(self.session.device), negative_singles=after["negative_singles"],
            stack=extra.get("stack"))

    # -- dry run ----------------------------------------------------------------------------------
    def plan(self) -> Dict[str, Any]:
        """--dry-run: what would be computed, with a time estimate from a timed probe of the
        method's real work on the first batch (Method.estimate). Nothing is cached but the
        quantizers' calibration, which prep would do first anyway (and which is not timed)."""
        todo = [k for k in self.ks if not self.cache.has_batch(self.kind, k)]
        if not self.ks:
            raise UsageError(f"this shard owns none of batches {self.sb}..{self.eb}")
        x, y = self.session.sensitivity_batch(self.ks[0])
        model = self.session.float_model
        with torch.no_grad():
            model(x)
            t = time.time()
            model(x)
            fwd = time.time() - t
        per_batch_seconds, probe_seconds, engine = 0.0, 0.0, self.engine
        per_file, work = self.method.estimate_sizes(self.session)
        if todo:
            self.session.qmodel  # noqa: B018  calibrated (or loaded) before the probe, as prep does
            runner, engine, _ = self.method.runner(self.session, self.engine)
            t = time.time()
            per_batch_seconds = self.method.estimate(self.session, x, y, engine, runner)
            probe_seconds = time.time() - t
        plan = {
            "method": self.method.name, "dry_run": True, "fingerprint": self.session.fingerprint,
            "cache": str(self.cache.root), "batches": self.ks, "to_compute": todo,
            "already_cached": [k for k in self.ks if k not in todo], "engine": engine,
            "per_batch": work, "forward_seconds_probe": round(fwd, 5), "probe_seconds": round(probe_seconds, 3),
            "estimated_seconds_per_batch": round(per_batch_seconds, 4),
            # the options of every decided layer: weight widths, or w4a8-style pairs (quant.options)
            "options": [self.session.cfg.quant.option_label(w, a) for w, a in self.session.cfg.quant.pairs()],
            "estimated_seconds": round(per_batch_seconds * len(todo), 2),
            "estimated_cache_bytes": per_file * len(todo),
        }
        hint = self.method.cheaper_hint(self.session, fwd, len(todo), per_batch_seconds * len(todo))
        if hint:
            plan["suggestion"] = hint
        return plan


def run_prep(session, method: str, sb: int, eb: int, force: bool = False, engine: Optional[str] = None,
             dry_run: bool = False, shard: Optional[tuple] = None) -> Dict[str, Any]:
    """Compute batches sb..eb of one method into the cache; the summary as a dict (or the
    dry-run plan)."""
    run = PrepRun(session, method, sb, eb, force=force, engine=engine, shard=shard)
    return run.plan() if dry_run else run.run().to_dict()

"""What a sensitivity method is: the base class every method subclasses, its sensitivities as
the optimizer sees them, and the registry that every list of methods is derived from.

A method owns, in one module:
  - `name`, `help`, `program` ("IQP" or "ILP") and `marker` (the Pareto plot's);
  - `stored`: its cache directory (a `Stored`), or `reads`: the method whose cache it reads
    (naive reads CLADO's);
  - `prep_flags`: the prep settings it reads (any other given to its prep is refused);
  - its cache parameters, per-batch work count and dry-run estimate;
  - its compute for one batch, and for one rank's part of a batch (the parts sum to the batch);
  - `expected_arrays`: the arrays each cached batch must hold, checked on every read;
  - its sensitivities as the optimizer sees them, and its program with the predicted loss.

Adding a method is one new module that subclasses `Method` and decorates it with `@register`
(docs: README, "Where things live").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import CacheError
from ..optimize import Budget, OptionSpace, SolveResult
from ..registry import Registry
from ..store import Cache, Stored

Tick = Optional[Callable[[int], None]]

# how many rows (decided layers) a dry run's probe computes: spread over the model (probe_rows)
PROBE_ROWS = 3


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of `fn`."""
    import time

    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def probe_rows(n_layers: int, k: int = PROBE_ROWS) -> List[int]:
    """k decided layers spread over the model, the midpoints of k equal strata, whose rows'
    work, scaled by `extrapolate_rows`, estimates the work of every row; every layer when there
    are at most k."""
    if n_layers <= k:
        return list(range(n_layers))
    return sorted({min(n_layers - 1, int((i + 0.5) * n_layers / k)) for i in range(k)})


def extrapolate_rows(fixed: float, part: float, probed: Sequence[int], weights: Sequence[float]) -> float:
    """Seconds per batch from a probe: the work every batch does once (`fixed`: the probe with
    no rows) plus the probed rows' share (`part` − `fixed`) scaled to all rows by `weights`
    (each row's share of the work: its measurement count, or 1 each)."""
    w = sum(weights[l] for l in probed)
    if not probed or w <= 0:
        return fixed
    return fixed + max(part - fixed, 0.0) * sum(weights) / w


def space_of(manifest: Dict[str, Any]) -> OptionSpace:
    """The option space (decided layers x candidate widths) a cache was computed for."""
    decided = manifest["layers"]["decided"]
    act = manifest.get("act_bits")   # present only when the options differ in activation width
    return OptionSpace(layer_names=[n for n, _ in decided], candidates=list(manifest["candidates"]),
                       numel=[int(k) for _, k in decided], act_bits=list(act) if act is not None else None)


@dataclass
class SolveOptions:
    """How a program is solved: the IQP's PSD treatment (clado only), solver, time limit."""

    psd: str = "exact"
    solver: str = "auto"
    time_limit: float = 120.0
    threads: Optional[int] = None   # CPU threads a solver may use (None: its default)
    # cost rows besides the size, allowed options and ties (clado_cli.optimize.constraints);
    # every method's program must enforce them: decide checks each answer against them
    constraints: Optional[Any] = None


@dataclass
class Sensitivities:
    """One method's numbers combined over a set of cached batches, as the optimizer sees them.

    `singles`: one value per option (the option applied alone); `values`: the combined arrays
    as cached; subclasses add what their program needs."""

    method: str
    space: OptionSpace
    samples: int
    batches: List[int]
    values: Dict[str, np.ndarray] = field(repr=False)
    singles: np.ndarray = field(repr=False, default=None)
    # standard error of each cached array's mean across the batches (None with one batch)
    errors: Optional[Dict[str, np.ndarray]] = field(repr=False, default=None)
    singles_se: Optional[np.ndarray] = field(repr=False, default=None)

    def negative_words(self) -> str:
        return "sensitivities"

    def warnings(self) -> List[str]:
        neg = self.singles < 0
        if not neg.any():
            return []
        noise = ""
        if self.singles_se is not None:
            within = int((neg & (np.abs(self.singles) <= 2 * self.singles_se)).sum())
            noise = (f"; {within} of them lie within two standard errors of zero (batch noise, not a real gain)"
                     if within else "; none lies within two standard errors of zero")
        return [f"{int(neg.sum())} of {len(self.singles)} {self.negative_words()} are negative{noise}: the estimate "
                f"says quantizing those options lowers the loss, so even an unbinding budget may not pick the "
                f"widest widths"]


class Method:
    """Base class: see the module docstring. Class attributes describe; methods compute."""

    name: ClassVar[str]
    help: ClassVar[str]
    program: ClassVar[str]                      # "IQP" or "ILP"
    marker: ClassVar[str] = "o"
    stored: ClassVar[Optional[Stored]] = None   # its own cache directory, if it has one
    reads: ClassVar[Optional[str]] = None       # else: the method whose cache it reads
    prep_flags: ClassVar[Tuple[str, ...]] = ()  # prep settings it reads: engine, stack, estimator
    uses_psd: ClassVar[bool] = False            # whether --psd applies to its program
    engines: ClassVar[Tuple[str, ...]] = ()     # prep engines it has (fast first); () for one

    # -- identity -------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The method whose cache this one reads (itself when it has its own)."""
        return self.name if self.stored is not None else self.reads

    @property
    def preppable(self) -> bool:
        return self.stored is not None

    # -- prep ------------------------------------------------------------------------------------
    def cache_params(self, cfg) -> Dict[str, Any]:
        """Settings its numbers depend on beyond the manifest (stored as the kind's params.json)."""
        return {}

    def work_per_batch(self, session) -> int:
        """Units of work per batch, for the inner progress bar."""
        raise NotImplementedError

    def engine_used(self, cfg, requested: Optional[str] = None) -> Optional[str]:
        """The engine this prep will run: the one requested, else the config's (None for a
        method with one engine)."""
        return (requested or cfg.prep.engine) if self.engines else None

    def check_options(self, cfg) -> None:
        """Refuse, with a one-line UsageError, option sets this method does not define (HAWQ-V3 and
        activation widths); nothing by default."""

    def runner(self, session, engine: Optional[str]) -> Tuple[Any, Optional[str], Optional[str]]:
        """What every batch of one prep run reuses, built once: (state, engine, why the engine
        changed or None)."""
        return None, engine, None

    def compute(self, session, x, y, k: int, engine: Optional[str], runner: Any, tick: Tick = None) -> Dict[str, np.ndarray]:
        """The values of one batch (before caching)."""
        raise NotImplementedError

    def compute_part(self, session, x, y, k: int, rank: int, size: int, engine: Optional[str],
                     runner: Any) -> Dict[str, np.ndarray]:
        """Rank `rank` of `size`'s share of one batch, as arrays that sum over the ranks to what
        `finish_part` turns into the batch's values."""
        raise NotImplementedError

    def finish_part(self, session, summed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return summed

    def estimate_sizes(self, session) -> Tuple[int, Dict[str, int]]:
        """--dry-run: (bytes per cached batch file, work per batch)."""
        raise NotImplementedError

    def estimate(self, session, x, y, engine: Optional[str], runner: Any) -> float:
        """--dry-run: seconds per batch, from a timed probe of this method's real work on
        batch (x, y) (see `timed`, `probe_rows`), with `runner` as `runner()` built it. By
        default the whole batch is computed once (nothing is cached); a costly method probes a
        part of it and scales."""
        return timed(lambda: self.compute(session, x, y, 0, engine, runner))

    def cheaper_hint(self, session, forward_seconds: float, batches: int, seconds: float) -> Optional[str]:
        """--dry-run: a cheaper setting worth naming when this one would take long."""
        return None

    def batch_meta(self, cfg, engine: Optional[str]) -> Dict[str, Any]:
        """What a batch's sidecar records about how it was computed."""
        return {"engine": engine}

    def summary_extra(self, runner: Any) -> Dict[str, Any]:
        """Method-specific entries of the prep summary."""
        return {}

    # Checks on the combined numbers of a prep run, `after_prep(combined) -> {"negative_singles":
    # n or None}`, for a method that has them (CLADO); None: the run does not read its batches back
    after_prep: ClassVar[Optional[Callable[..., Dict[str, Any]]]] = None

    def expected_arrays(self, space: OptionSpace) -> Dict[str, Tuple[int, ...]]:
        """Name -> shape of every array a cached batch must hold."""
        raise NotImplementedError

    # -- optimize ---------------------------------------------------------------------------------
    def make_sensitivities(self, base: Sensitivities) -> Sensitivities:
        """The combined cache values turned into what the program needs."""
        raise NotImplementedError

    def solve(self, sens: Sensitivities, budget: Budget, opts: SolveOptions) -> Tuple[SolveResult, float]:
        """(solver result, predicted loss increase of its decision)."""
        raise NotImplementedError


METHODS: Registry[Method] = Registry("method")


def register(cls):
    """Class decorator: register one instance of a Method subclass under its name."""
    METHODS.register(cls.name)(cls())
    return cls


def get_method(name: str) -> Method:
    return METHODS.get(name)


def method_names() -> List[str]:
    """Every registered method, in registration order."""
    return METHODS.names(ordered=True)


def prep_method_names() -> List[str]:
    """The methods that have their own cache (the `clado prep` subcommands)."""
    return [n for n in method_names() if METHODS.get(n).preppable]


def stored_kinds() -> List[Stored]:
    return [METHODS.get(n).stored for n in prep_method_names()]


def kind_of(name: str) -> Stored:
    """The cache directory a method reads (naive: CLADO's)."""
    return get_method(get_method(name).source).stored


def check_cached_arrays(method: Method, space: OptionSpace, values: Dict[str, np.ndarray], where: str) -> None:
    """Every array the method needs, with its shape, finite; nothing unexpected."""
    want = method.expected_arrays(space)
    missing = [n for n in want if n not in values]
    if missing:
        raise CacheError(f"{where} lacks the array {missing[0]!r} of the {method.stored.label} "
                         f"(has {sorted(values) or 'none'}); delete it and re-run clado prep {method.name}")
    for name, shape in want.items():
        a = values[name]
        if tuple(a.shape) != tuple(shape):
            raise CacheError(f"{where}: array {name!r} has shape {tuple(a.shape)}, expected {tuple(shape)} for "
                             f"{space.n_layers} decided layers x {len(space.candidates)} widths")
        if not np.issubdtype(a.dtype, np.number):
            raise CacheError(f"{where}: array {name!r} holds {a.dtype}, not numbers")
        if not np.all(np.isfinite(a)):
            raise CacheError(f"{where}: array {name!r} has {int(np.sum(~np.isfinite(a)))} entries that are not "
                             f"finite (NaN or inf in the model, the data or the quantizers when it was computed)")
    extra = sorted(set(values) - set(want))
    if extra:
        raise CacheError(f"{where} holds unexpected arrays {extra} for the {method.stored.label}")


def load_sensitivities(cache: Cache, method: Method, ks: Optional[Sequence[int]] = None,
                       combined=None) -> Sensitivities:
    """One method's numbers over the batches ks (all cached by default). `combined`: the
    source's `cache.combine(...)` when the caller has it already (clado and naive share it)."""
    space = space_of(cache.manifest)
    src = get_method(method.source)
    vals, samples, batches, errors = combined if combined is not None else combine_checked(cache, src, ks)
    base = Sensitivities(method=method.name, space=space, samples=samples, batches=list(batches), values=vals,
                         errors=errors)
    return method.make_sensitivities(base)


def combine_checked(cache: Cache, method: Method, ks: Optional[Sequence[int]] = None):
    """`cache.combine` for a method's own directory, every batch's arrays checked as it is read."""
    space = space_of(cache.manifest)
    return cache.combine(method.stored, ks, se=True,
                         check=lambda arrays, path: check_cached_arrays(method, space, arrays, f"cache file {path}"))


def content_check(cache: Cache):
    """A `check(kind, arrays, path)` for Cache.verify and merge_caches: each registered
    method's batches must hold its arrays (names, shapes, finite values)."""
    space = space_of(cache.manifest) if cache.manifest else None

    def check(kind: Stored, arrays: Dict[str, np.ndarray], path) -> None:
        if space is None or kind.name not in METHODS or METHODS.get(kind.name).stored is None:
            return
        check_cached_arrays(METHODS.get(kind.name), space, arrays, f"cache file {path}")

    return check

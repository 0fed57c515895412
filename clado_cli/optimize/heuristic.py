"""A fast incumbent for the one-hot quadratic program: greedy by loss per byte, then local search
(single-layer changes and changes of two layers at once, within the budget), then a
large-neighbourhood search that frees a few layers at a time and solves each small subproblem
exactly by enumeration.

The program here is general: options grouped into layers (any number of options per layer), a
symmetric Q and any number of cost rows with bounds (size in bits, BOPs, user tables, no-good
cuts); minimize x'Qx over one-hot x with every row within its bound. Within-layer off-diagonal entries of Q never meet a one-hot x, so they are
zeroed on entry (the value of every feasible x is unchanged).

Pure numpy; the exact solvers start from this answer, and it is the answer when none is installed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

ENUMERATION_LIMIT = 20_000  # choices per exact subproblem of the neighbourhood search


@dataclass
class OneHotProgram:
    """minimize x'Qx over one-hot x per layer with costs @ x <= caps, row by row.

    `costs` is (rows x options) or one row; `caps` one bound per row. Rows whose entries and
    bound are integers (bits, BOPs, no-good cuts) are compared exactly; other rows (user cost
    tables) with a tolerance of 1e-9 of their scale. `size` is one surrogate cost per option
    (each binding row divided by its slack above the all-cheapest choice, summed): the
    heuristic's "bytes" for its per-byte ratios; with one row it orders moves as that row does.
    """

    Q: np.ndarray
    layer: np.ndarray  # layer index of every option, 0..L-1, options of a layer contiguous
    costs: np.ndarray  # (rows, options), or (options,) for one row
    caps: np.ndarray  # (rows,), or a number for one row
    offset: float = 0.0  # constant added to x'Qx (from layers fixed before this program was built)
    starts: np.ndarray = field(init=False)

    def __post_init__(self):
        self.layer = np.asarray(self.layer, dtype=np.int64)
        costs = np.asarray(self.costs, dtype=float)
        self.costs = costs.reshape(1, -1) if costs.ndim == 1 else costs
        self.caps = np.atleast_1d(np.asarray(self.caps, dtype=float)).copy()
        if self.costs.shape != (len(self.caps), len(self.layer)):
            raise ValueError(f"costs of shape {self.costs.shape} for {len(self.caps)} bounds and {len(self.layer)} options")
        Q = np.array(self.Q, dtype=float)
        Q = (Q + Q.T) / 2.0
        same = self.layer[:, None] == self.layer[None, :]
        diag = np.diag(Q).copy()
        Q[same] = 0.0
        np.fill_diagonal(Q, diag)
        self.Q = Q
        self.n_layers = int(self.layer.max()) + 1 if self.layer.size else 0
        counts = np.bincount(self.layer, minlength=self.n_layers)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        if np.any(np.diff(self.layer) < 0):
            raise ValueError("options of a layer must be contiguous and layers in order")
        self._derive()

    def _derive(self) -> None:
        """Tolerances, the cheapest and dearest totals per row and the surrogate size."""
        c = self.costs
        integral = np.all(c == np.round(c), axis=1) & (self.caps == np.round(self.caps))
        if self.n_layers:
            self.low = np.minimum.reduceat(c, self.starts[:-1], axis=1).sum(axis=1)
            self.high = np.maximum.reduceat(c, self.starts[:-1], axis=1).sum(axis=1)
        else:
            self.low = self.high = np.zeros(len(self.caps))
        scale = np.maximum(np.abs(self.caps), np.maximum(np.abs(self.low), np.abs(self.high)))
        self.tol = np.where(integral, 0.0, 1e-9 * np.maximum(scale, 1.0))
        self.limit = self.caps + self.tol
        binding = self.high > self.limit
        rows = binding if binding.any() else np.ones(len(self.caps), dtype=bool)
        room = np.maximum(self.caps - self.low, 1e-12 * np.maximum(scale, 1.0))
        self.weight = np.where(rows, 1.0 / room, 0.0)
        self.size = self.weight @ c

    @property
    def capacity(self) -> float:
        """The surrogate capacity: 1 per binding row."""
        return float(self.weight @ self.caps)

    def options_of(self, l: int) -> np.ndarray:
        return np.arange(self.starts[l], self.starts[l + 1])

    def value(self, opts: np.ndarray) -> float:
        opts = np.asarray(opts)
        return float(self.Q[np.ix_(opts, opts)].sum()) + self.offset

    def used(self, opts: np.ndarray) -> np.ndarray:
        """Each row's total at a choice."""
        return self.costs[:, np.asarray(opts)].sum(axis=1)

    def fits(self, opts: np.ndarray) -> bool:
        return bool(np.all(self.used(opts) <= self.limit))

    def narrowest(self) -> np.ndarray:
        return np.array([self.starts[l] + int(np.argmin(self.size[self.starts[l]:self.starts[l + 1]])) for l in range(self.n_layers)])

    def widest(self) -> np.ndarray:
        return np.array([self.starts[l] + int(np.argmax(self.size[self.starts[l]:self.starts[l + 1]])) for l in range(self.n_layers)])


class _State:
    """A one-hot choice (option per layer) with g = Q x and each row's total kept up to date."""

    def __init__(self, prog: OneHotProgram, opts: np.ndarray):
        self.prog = prog
        self.opts = np.array(opts, dtype=np.int64)
        self.g = prog.Q[:, self.opts].sum(axis=1)
        self.used = prog.used(self.opts)

    def copy(self) -> "_State":
        st = _State.__new__(_State)
        st.prog, st.opts, st.g, st.used = self.prog, self.opts.copy(), self.g.copy(), self.used.copy()
        return st

    @property
    def value(self) -> float:
        return float(self.g[self.opts].sum()) + self.prog.offset

    @property
    def fits(self) -> bool:
        return bool(np.all(self.used <= self.prog.limit))

    def current(self) -> np.ndarray:
        """The chosen option of each option's layer."""
        return self.opts[self.prog.layer]

    def changes(self) -> np.ndarray:
        """(rows, options): how each row's total changes when each option replaces its layer's current one."""
        return self.prog.costs - self.prog.costs[:, self.current()]

    def fitting(self, ds: np.ndarray) -> np.ndarray:
        """Which single changes (columns of ds) keep every row within its bound."""
        return np.all(self.used[:, None] + ds <= self.prog.limit[:, None], axis=0)

    def over(self) -> np.ndarray:
        """The rows over their bound."""
        return self.used > self.prog.limit

    def single_deltas(self) -> np.ndarray:
        """Change of x'Qx when each option replaces its layer's current one (0 for current ones)."""
        Q, a = self.prog.Q, self.current()
        d = 2.0 * (self.g - self.g[a]) + np.diag(Q) + Q[a, a]
        d[self.opts] = 0.0
        return d

    def move(self, i: int) -> None:
        l = self.prog.layer[i]
        a = self.opts[l]
        if a == i:
            return
        self.g += self.prog.Q[:, i] - self.prog.Q[:, a]
        self.used += self.prog.costs[:, i] - self.prog.costs[:, a]
        self.opts[l] = i


def _saved(st: "_State", ds: np.ndarray) -> np.ndarray:
    """What each change frees on the rows that are over, weighted as the surrogate size; 0 for a
    change that does not lower the total weighted excess over the bounds (so that a chain of
    such changes cannot cycle between rows)."""
    over = st.over()
    if not over.any():
        return np.zeros(ds.shape[1])
    w, limit = st.prog.weight[:, None], st.prog.limit[:, None]
    now = float((st.prog.weight * np.maximum(st.used - st.prog.limit, 0.0)).sum())
    after = (w * np.maximum(st.used[:, None] + ds - limit, 0.0)).sum(axis=0)
    saved = -(st.prog.weight[over] @ ds[over])
    return np.where(after < now, np.maximum(saved, 0.0), 0.0)


def _greedy_down(prog: OneHotProgram, rng) -> Optional[np.ndarray]:
    """From every layer at its widest option, narrow the layer that costs least per byte saved
    until the choice fits."""
    st = _State(prog, prog.widest())
    while not st.fits:
        d = st.single_deltas()
        saved = _saved(st, st.changes())
        ok = saved > 0
        if not ok.any():
            return None
        ratio = np.where(ok, d / np.where(ok, saved, 1), np.inf)
        st.move(int(np.argmin(ratio)))
    return st.opts


def _greedy_up(prog: OneHotProgram, rng) -> Optional[np.ndarray]:
    """From every layer at its narrowest option, take the change that lowers x'Qx most per byte
    added while it fits."""
    st = _State(prog, prog.narrowest())
    if not st.fits:
        return None
    while True:
        d = st.single_deltas()
        ds = st.changes()
        added = prog.weight @ ds
        ok = st.fitting(ds) & (d < 0)
        if not ok.any():
            return st.opts
        ratio = np.where(ok, d / np.maximum(added, 1e-12), np.inf)
        st.move(int(np.argmin(ratio)))


def _repair(st: _State, keep_layer: int) -> None:
    """Narrow other layers until the choice fits: cheapest loss per byte freed first, except that
    at every step the chain may instead finish with the single narrowing of least loss that
    covers all that is still over (the per-byte order overshoots with one large layer where a
    small one would do); the best of these endings is taken."""
    prog = st.prog
    start_opts = st.opts.copy()
    steps: List[int] = []
    best_end, best_value = None, np.inf
    while not st.fits:
        d = st.single_deltas()
        ds = st.changes()
        saved = _saved(st, ds)
        ok = (saved > 0) & (prog.layer != keep_layer)
        if not ok.any():
            break
        covers = ok & st.fitting(ds)
        if covers.any():
            c = int(np.argmin(np.where(covers, d, np.inf)))
            if st.value + d[c] < best_value:
                best_end, best_value = (len(steps), c), st.value + d[c]
        i = int(np.argmin(np.where(ok, d / np.where(ok, saved, 1.0), np.inf)))
        st.move(i)
        steps.append(i)
    if st.fits and st.value <= best_value:
        return
    if best_end is None:
        return
    # replay the best ending
    for l, o in enumerate(start_opts):
        st.move(int(o))
    for i in steps[: best_end[0]] + [best_end[1]]:
        st.move(i)


def _fill(st: _State, keep_layer: int) -> None:
    """Widen other layers, most gain per byte first, while a gain fits."""
    prog = st.prog
    while True:
        d = st.single_deltas()
        ds = st.changes()
        added = prog.weight @ ds
        ok = (d < 0) & st.fitting(ds) & (prog.layer != keep_layer)
        if not ok.any():
            return
        st.move(int(np.argmin(np.where(ok, d / np.maximum(added, 1e-12), np.inf))))


def exchange(prog: OneHotProgram, opts: np.ndarray, deadline: float = np.inf) -> Optional[np.ndarray]:
    """The best ejection chain: change one layer, then repair the budget by narrowing others
    (cheapest per byte first) or spend what it freed by widening others (most gain per byte
    first). It reaches trades of one wide layer against many narrow ones that single and pair
    moves cannot. None when no chain improves."""
    base = _State(prog, opts)
    value = base.value
    best, best_value = None, value - 1e-12 * max(1.0, abs(value))
    d = base.single_deltas()
    for i in np.argsort(d):
        if time.perf_counter() >= deadline:
            break
        if i in base.opts:
            continue
        st = base.copy()
        st.move(int(i))
        _repair(st, prog.layer[i])
        _fill(st, prog.layer[i])
        if st.fits and st.value < best_value:
            best, best_value = st.opts.copy(), st.value
    return best


def local_search(prog: OneHotProgram, opts: np.ndarray, deadline: float = np.inf, pairs: bool = True) -> np.ndarray:
    """Best-improvement descent over single-layer changes and, when none improves, changes of
    two layers at once, then ejection chains (exchange); every step stays within the capacity."""
    st = _State(prog, opts)
    Q, layer = prog.Q, prog.layer
    other_layer = layer[:, None] != layer[None, :]
    while time.perf_counter() < deadline:
        scale = max(1.0, abs(st.value))
        tol = 1e-12 * scale
        d = st.single_deltas()
        a = st.current()
        ds = st.changes()
        ok = st.fitting(ds)
        i = int(np.argmin(np.where(ok, d, np.inf)))
        if ok[i] and d[i] < -tol:
            st.move(i)
            continue
        if not pairs:
            break
        M = Q - Q[:, a] - Q[a, :] + Q[np.ix_(a, a)]
        P = d[:, None] + d[None, :] + 2.0 * M
        room = prog.limit - st.used
        fits = np.ones(P.shape, dtype=bool)
        for r in range(len(room)):
            fits &= (ds[r][:, None] + ds[r][None, :]) <= room[r]
        P = np.where(fits & other_layer, P, np.inf)
        k = int(np.argmin(P))
        i, j = divmod(k, P.shape[1])
        if P[i, j] < -tol:
            st.move(i)
            st.move(j)
            continue
        chain = exchange(prog, st.opts, deadline)
        if chain is not None:
            st = _State(prog, chain)
            continue
        break
    return st.opts


def _product(option_lists: List[np.ndarray]) -> np.ndarray:
    grids = np.meshgrid(*option_lists, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def solve_subproblem(prog: OneHotProgram, opts: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The best choice that differs from opts only on the layers `free`, by enumeration."""
    opts = np.asarray(opts)
    fixed_mask = np.ones(prog.n_layers, dtype=bool)
    fixed_mask[free] = False
    fixed = opts[fixed_mask]
    Q = prog.Q
    combos = _product([prog.options_of(l) for l in free])  # (N, k) option indices
    h = np.diag(Q) + 2.0 * Q[:, fixed].sum(axis=1)
    values = h[combos].sum(axis=1)
    k = len(free)
    for p in range(k):
        for q in range(p + 1, k):
            values += 2.0 * Q[combos[:, p], combos[:, q]]
    ok = np.ones(len(combos), dtype=bool)
    for r in range(len(prog.caps)):
        ok &= prog.costs[r][combos].sum(axis=1) + prog.costs[r][fixed].sum() <= prog.limit[r]
    values = np.where(ok, values, np.inf)
    best = int(np.argmin(values))
    out = opts.copy()
    if np.isfinite(values[best]):
        out[free] = combos[best]
    return out


def _marginal_layers(prog: OneHotProgram, opts: np.ndarray, k: int, rng: Optional[np.random.Generator]) -> np.ndarray:
    """k layers at the margin of the budget: those whose best widening gains most per byte and
    those whose best narrowing loses least per byte freed (a budget exchange among several of
    them is what single and pair moves miss). The best ranked without rng; with it, drawn with
    weights falling 20% per rank."""
    st = _State(prog, opts)
    d = st.single_deltas()
    ds = prog.size - prog.size[st.current()]
    L = prog.n_layers
    up = np.full(L, np.inf)
    down = np.full(L, np.inf)
    grow, shrink = ds > 0, ds < 0
    np.minimum.at(up, prog.layer[grow], d[grow] / ds[grow])
    np.minimum.at(down, prog.layer[shrink], d[shrink] / -ds[shrink])
    chosen: List[int] = []
    for score, want in ((up, (k + 1) // 2), (down, k // 2)):
        order = [int(l) for l in np.argsort(score, kind="stable") if np.isfinite(score[l]) and l not in chosen][: 3 * k]
        take = min(len(order), want)
        if take <= 0:
            continue
        if rng is None:
            chosen += order[:take]
        else:
            w = 0.8 ** np.arange(len(order))
            chosen += [int(l) for l in rng.choice(order, size=take, replace=False, p=w / w.sum())]
    if len(chosen) < k:
        rest = np.setdiff1d(np.arange(L), chosen)
        extra = rest[:k - len(chosen)] if rng is None else rng.choice(rest, size=k - len(chosen), replace=False)
        chosen += [int(l) for l in extra]
    return np.array(chosen[:k])


def neighbourhood_search(prog: OneHotProgram, opts: np.ndarray, deadline: float, rng: np.random.Generator,
                         max_rounds: int = 10_000, patience: int = 0) -> np.ndarray:
    """Free a few layers at a time (random ones, or one layer with those it interacts with most),
    solve that subproblem exactly, and descend again after every improvement."""
    L = prog.n_layers
    counts = np.diff(prog.starts)
    if L <= 1:
        return opts
    # layers that fit in one enumeration
    k = 1
    while k < L and np.prod(np.sort(counts)[::-1][: k + 1].astype(float)) <= ENUMERATION_LIMIT:
        k += 1
    if k >= L:
        return solve_subproblem(prog, opts, np.arange(L))
    absQ = np.abs(prog.Q)
    strength = np.add.reduceat(np.add.reduceat(absQ, prog.starts[:-1], axis=0), prog.starts[:-1], axis=1)
    np.fill_diagonal(strength, 0.0)
    best_opts, best_value = np.array(opts), prog.value(opts)
    patience = patience or max(30, 3 * L)
    stale = 0
    for round_ in range(max_rounds):
        if time.perf_counter() >= deadline or stale >= patience:
            break
        kind = round_ % 3
        if kind == 0:
            free = _marginal_layers(prog, best_opts, k, rng if round_ else None)
        elif kind == 1:
            free = rng.choice(L, size=k, replace=False)
        else:
            seed = int(rng.integers(L))
            w = strength[seed] + 1e-12
            others = rng.choice(np.delete(np.arange(L), seed), size=k - 1, replace=False, p=np.delete(w, seed) / np.delete(w, seed).sum())
            free = np.concatenate([[seed], others])
        free = np.sort(free)
        cand = solve_subproblem(prog, best_opts, free)
        value = prog.value(cand)
        if value < best_value - 1e-12 * max(1.0, abs(best_value)):
            cand = local_search(prog, cand, deadline)
            best_opts, best_value = cand, prog.value(cand)
            stale = 0
        else:
            stale += 1
    return best_opts


def incumbent(prog: OneHotProgram, time_limit: float = 0.5, seed: int = 0) -> Optional[np.ndarray]:
    """A good feasible choice (option index per layer) within about time_limit seconds, or None
    when the greedy starts find none (several rows can make a feasible choice hard to find; the
    exact solvers then search without a start)."""
    start = time.perf_counter()
    deadline = start + time_limit
    rng = np.random.default_rng(seed)
    starts = [s for s in (_greedy_down(prog, rng), _greedy_up(prog, rng)) if s is not None]
    if not starts:
        return None
    best, best_value = None, np.inf
    for s in starts:
        s = local_search(prog, s, deadline)
        v = prog.value(s)
        if v < best_value:
            best, best_value = s, v
    return neighbourhood_search(prog, best, deadline, rng)

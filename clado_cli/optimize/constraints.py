"""What a choice must satisfy beyond one option per layer (docs/methods.md, "Costs, budgets and ties").

- Cost rows: a cost per option (size in bits, BOPs, a user table, a no-good cut) and a bound on
  its sum over the chosen options. Any number at once; every solver enforces every row.
- Allowed options: a mask over the options (per-layer widths; a pinned layer has one option).
- Ties: groups of layers that must take the same candidate (x_{l,k} = x_{m,k}).

`Reduction` turns a space with these into the program the solvers see: each tie group becomes one
layer whose options are the candidates allowed in every member, Q becomes P'QP and each cost row
c becomes P'c, where column u of the 0/1 matrix P marks the member options of reduced option u.
For one-hot x = Pz this is exact: x'Qx = z'(P'QP)z and c'x = (P'c)'z, and every choice that meets
the ties and the mask is some Pz. With no ties and no mask, P is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import UsageError
from .heuristic import OneHotProgram
from .problem import OptionSpace


@dataclass
class CostRow:
    """sum of `values` over the chosen options <= `bound`. Shown to users divided by `scale`
    (size is kept in bits so the comparison is exact, and shown in bytes)."""

    name: str
    values: np.ndarray
    bound: float
    unit: str = ""
    scale: float = 1.0
    given: Optional[str] = None  # what the user typed, e.g. "4MB" or "rel:0.5"

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=float)
        self.bound = float(self.bound)

    def text(self, v: float) -> str:
        v = v / self.scale
        shown = f"{v:.0f}" if float(v).is_integer() else f"{v:.6g}"
        return f"{shown} {self.unit}".strip()


def size_row(space: OptionSpace, budget_bytes: int, given: Optional[str] = None) -> CostRow:
    """The decided weight bytes, kept in bits (numel x weight bits per option)."""
    return CostRow("size", np.outer(space.numel, space.candidates).ravel().astype(float), 8 * int(budget_bytes),
                   unit="bytes", scale=8.0, given=given)


@dataclass
class Constraints:
    rows: List[CostRow] = field(default_factory=list)
    allowed: Optional[np.ndarray] = None  # bool per option of the space
    ties: List[List[int]] = field(default_factory=list)  # layer indices

    def with_row(self, row: CostRow) -> "Constraints":
        return Constraints(self.rows + [row], self.allowed, self.ties)

    def admits(self, space: OptionSpace, choice: Sequence[int]) -> bool:
        """Whether a choice meets every row (exactly for integer rows), the mask and the ties."""
        x = space.one_hot(choice)
        if self.allowed is not None and np.any(x.astype(bool) & ~np.asarray(self.allowed, bool)):
            return False
        if any(len({int(choice[l]) for l in group}) > 1 for group in self.ties):
            return False
        return all(_within(float(row.values @ x), row) for row in self.rows)


def _within(value: float, row: CostRow) -> bool:
    integral = float(row.bound).is_integer() and np.all(row.values == np.round(row.values))
    return value <= row.bound + (0.0 if integral else 1e-9 * max(1.0, abs(row.bound), float(np.abs(row.values).max(initial=0.0)) * 1.0))


def _groups(n_layers: int, ties: List[List[int]]) -> List[List[int]]:
    """Tie groups merged where they overlap, plus every untied layer alone, ordered by first layer."""
    parent = list(range(n_layers))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for group in ties:
        group = [int(l) for l in group]
        if any(not 0 <= l < n_layers for l in group):
            raise UsageError(f"tie group {group} names a layer outside 0..{n_layers - 1}")
        for l in group[1:]:
            parent[root(l)] = root(group[0])
    members: Dict[int, List[int]] = {}
    for l in range(n_layers):
        members.setdefault(root(l), []).append(l)
    return sorted(members.values(), key=lambda g: g[0])


class Reduction:
    """The space with its ties and mask folded in: the program's layers, options and the map back."""

    def __init__(self, space: OptionSpace, constraints: Constraints):
        self.space, self.constraints = space, constraints
        B = len(space.candidates)
        allowed = np.ones(space.n_options, bool) if constraints.allowed is None else np.asarray(constraints.allowed, bool)
        if allowed.shape != (space.n_options,):
            raise UsageError(f"the allowed-options mask has shape {allowed.shape}, expected ({space.n_options},)")
        for row in constraints.rows:
            if row.values.shape != (space.n_options,) or not np.all(np.isfinite(row.values)) or not np.isfinite(row.bound):
                raise UsageError(f"cost {row.name!r} needs one finite value per option ({space.n_options}) and a finite bound")
        self.groups = _groups(space.n_layers, constraints.ties)
        layer, cand, cols = [], [], []
        for g, group in enumerate(self.groups):
            ks = [k for k in range(B) if all(allowed[l * B + k] for l in group)]
            if not ks:
                names = ", ".join(space.layer_names[l] for l in group)
                what = f"tied layers {names} share no allowed width" if len(group) > 1 else f"layer {names} has no allowed width"
                raise UsageError(what)
            for k in ks:
                layer.append(g)
                cand.append(k)
                cols.append([l * B + k for l in group])
        self.layer = np.asarray(layer, dtype=np.int64)
        self.cand = np.asarray(cand, dtype=np.int64)
        n_red = len(layer)
        rows = np.concatenate([np.asarray(c) for c in cols])
        owner = np.repeat(np.arange(n_red), [len(c) for c in cols])
        self.P = sp.csr_matrix((np.ones(len(rows)), (rows, owner)), shape=(space.n_options, n_red))
        self.identity = n_red == space.n_options and not constraints.ties

    @property
    def rows(self) -> List[CostRow]:
        return self.constraints.rows

    def restricted(self, keep: np.ndarray) -> "Reduction":
        """The same with the program's options outside `keep` (bool per option of the program)
        removed, through the space options each stands for (its group's layers at its width)."""
        B = len(self.space.candidates)
        allowed = np.ones(self.space.n_options, bool) if self.constraints.allowed is None \
            else np.asarray(self.constraints.allowed, bool).copy()
        for o in np.nonzero(~np.asarray(keep, bool))[0]:
            for l in self.groups[self.layer[o]]:
                allowed[l * B + self.cand[o]] = False
        return Reduction(self.space, Constraints(self.constraints.rows, allowed, self.constraints.ties))

    def reduce_matrix(self, Q: np.ndarray) -> np.ndarray:
        """P'QP (Q symmetrized)."""
        Q = (np.asarray(Q, dtype=float) + np.asarray(Q, dtype=float).T) / 2.0
        if self.identity:
            return Q
        A = np.asarray(self.P.T @ Q)  # P'Q
        return np.asarray(self.P.T @ A.T).T  # (P'(P'Q)')' = P'QP

    def reduce_vector(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(self.P.T @ np.asarray(v, dtype=float)).ravel()

    def costs(self) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, len(self.layer)))
        return np.stack([self.reduce_vector(r.values) for r in self.rows])

    def program(self, Q: np.ndarray, offset: float = 0.0) -> OneHotProgram:
        return OneHotProgram(self.reduce_matrix(Q), self.layer, self.costs(), [r.bound for r in self.rows], offset=offset)

    def choice(self, opts: Sequence[int]) -> List[int]:
        """The candidate index per layer of the space for a reduced choice (option per group)."""
        out = [0] * self.space.n_layers
        for g, o in enumerate(opts):
            if self.layer[int(o)] != g:
                raise ValueError(f"option {o} is not one of group {g}'s")
            for l in self.groups[g]:
                out[l] = int(self.cand[int(o)])
        return out

    def opts_of(self, choice: Sequence[int]) -> Optional[np.ndarray]:
        """The reduced choice of a choice of the space, None when it breaks a tie or the mask."""
        opts = []
        for g, group in enumerate(self.groups):
            ks = {int(choice[l]) for l in group}
            hit = np.nonzero((self.layer == g) & (self.cand == next(iter(ks))))[0] if len(ks) == 1 else []
            if len(hit) != 1:
                return None
            opts.append(int(hit[0]))
        return np.asarray(opts)

    def ranges(self) -> List[tuple]:
        """Each row's (smallest, largest) total over the choices the mask and the ties admit."""
        out = []
        starts = np.concatenate([[0], np.cumsum(np.bincount(self.layer, minlength=len(self.groups)))])
        for c in self.costs():
            out.append((float(np.minimum.reduceat(c, starts[:-1]).sum()), float(np.maximum.reduceat(c, starts[:-1]).sum())))
        return out

    def check(self) -> None:
        """UsageError naming the first row whose bound no admitted choice meets, with its feasible range."""
        for row, (low, high) in zip(self.rows, self.ranges()):
            if not _within(low, row):
                given = f" ({row.given})" if row.given and row.given.lower().startswith(("rel:", "avg:")) else ""
                raise UsageError(f"{row.name} budget {row.text(row.bound)}{given} is below the smallest possible {row.name} "
                                 f"{row.text(low)}; feasible range: {row.text(low)}..{row.text(high)}")

    def report(self, choice: Sequence[int], Q: Optional[np.ndarray] = None) -> List[dict]:
        """Every row at a choice: value, bound, slack, and whether it binds: some single-layer
        change that would lower x'Qx (or, with Q None, move to a costlier option) exceeds this
        row's bound (other rows may block the same change too)."""
        x = self.space.one_hot(choice)
        opts = self.opts_of(choice)
        blocked = self._blocked(opts, Q) if opts is not None else [False] * len(self.rows)
        return [{"name": r.name, "value": float(r.values @ x) / r.scale, "bound": r.bound / r.scale, "unit": r.unit,
                 "slack": (r.bound - float(r.values @ x)) / r.scale, "given": r.given, "binding": bool(b)}
                for r, b in zip(self.rows, blocked)]

    def _blocked(self, opts: np.ndarray, Q: Optional[np.ndarray]) -> List[bool]:
        if not self.rows:
            return []
        prog = self.program(np.zeros((self.space.n_options,) * 2) if Q is None else Q)
        opts = np.asarray(opts)
        a = opts[prog.layer]
        if Q is None:
            better = prog.size > prog.size[a]
        else:
            g = prog.Q[:, opts].sum(axis=1)
            d = 2.0 * (g - g[a]) + np.diag(prog.Q) + prog.Q[a, a]
            better = d < -1e-12 * max(1.0, abs(prog.value(opts)))
        better[opts] = False
        used = prog.used(opts)
        over = used[:, None] + prog.costs - prog.costs[:, a] > prog.limit[:, None]  # (rows, options)
        return [bool(np.any(better & over[r])) for r in range(len(self.rows))]

"""The exact linearization of the one-hot quadratic program, as sparse matrices.

Variables: x_i for every option, y_ij (i < j, options of different layers) standing for x_i x_j.
Objective Σ Q_ii x_i + 2 Σ Q_ij y_ij (+ offset), which equals x'Qx whenever y_ij = x_i x_j.
Rows:
  - one-hot: Σ_{i in layer l} x_i = 1 for every layer;
  - budget: Σ s_i x_i <= W, for every cost row (size, BOPs, user tables, no-good cuts);
  - one-hot RLT (the one-hot rows times x_i): Σ_{j in layer m} y_ij = x_i for every option i and
    every other layer m. With x binary these force y_ij = x_i x_j;
  - budget RLT (each binding cost row times x_i): s_i x_i + Σ_{j not in i's layer} s_j y_ij <= W x_i.
    Its product with (1 - x_i) adds nothing: under the one-hot RLT rows it is the sum of the
    budget RLT rows of the other options of i's layer (checked in tests/optimize).
Sizes enter reduced by each layer's narrowest option (s_i - min_l, W - Σ min_l), which is the same
set of rows under the one-hot RLT equalities but sparser (the narrowest options drop out) and
scaled to W = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp

from .heuristic import OneHotProgram


@dataclass
class LinearModel:
    """min c'v + offset s.t. row_lower <= A v <= row_upper, col_lower <= v <= col_upper; v = (x, y)."""

    c: np.ndarray
    offset: float
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    n_x: int
    first: np.ndarray  # pair k is (first[k], second[k])
    second: np.ndarray
    budget_rlt_rows: np.ndarray  # (cost rows, options): row index of option i's RLT row with cost row k, -1 when left out

    @property
    def n_cols(self) -> int:
        return len(self.c)

    def y_of(self, x: np.ndarray) -> np.ndarray:
        return x[self.first] * x[self.second]

    def point(self, opts: np.ndarray) -> np.ndarray:
        """The (x, y) of a choice."""
        x = np.zeros(self.n_x)
        x[np.asarray(opts)] = 1.0
        return np.concatenate([x, self.y_of(x)])


def reduced_sizes(prog: OneHotProgram, r: int = 0):
    """Row r's costs minus each layer's cheapest, its bound minus their sum, both scaled to
    bound 1 (None when the row admits only the cheapest options or every choice)."""
    cost = prog.costs[r]
    mins = np.minimum.reduceat(cost, prog.starts[:-1])
    s = cost - mins[prog.layer]
    W = float(prog.limit[r] - mins.sum())
    widest_total = float(np.maximum.reduceat(s, prog.starts[:-1]).sum())
    if W >= widest_total:
        return None, "free"
    if W <= prog.tol[r]:
        return None, "narrowest"
    return s / W, "binding"


def pairs(layer: np.ndarray):
    """The pair columns' options, in column order: (first[k], second[k]), first < second, of
    different layers."""
    first, second = np.triu_indices(len(layer), 1)
    across = layer[first] != layer[second]
    return first[across], second[across]


def build(prog: OneHotProgram, budget_rlt: bool = True, budget_rlt_complement: bool = False,
          rlt_options: Optional[np.ndarray] = None) -> LinearModel:
    """The linearization of prog (see the module text). rlt_options: options whose budget RLT row
    is included (default all, when budget_rlt)."""
    Q, layer, n, L = prog.Q, prog.layer, len(prog.layer), prog.n_layers
    first, second = pairs(layer)
    P = len(first)
    pair_of = np.full((n, n), -1, dtype=np.int64)
    pair_of[first, second] = pair_of[second, first] = n + np.arange(P)
    c = np.concatenate([np.diag(Q), 2.0 * Q[first, second]])
    rows, cols, vals, lo, up = [], [], [], [], []
    r = 0
    # one-hot
    rows.append(layer.copy()); cols.append(np.arange(n)); vals.append(np.ones(n))
    lo.append(np.ones(L)); up.append(np.ones(L)); r += L
    binding = []
    for k in range(len(prog.caps)):
        s, kind = reduced_sizes(prog, k)
        if kind == "narrowest":  # only each layer's cheapest options fit this row
            s = prog.costs[k] - np.minimum.reduceat(prog.costs[k], prog.starts[:-1])[layer]
            rows.append(np.full(n, r)); cols.append(np.arange(n)); vals.append(s)
            lo.append([-np.inf]); up.append([float(prog.limit[k] - np.minimum.reduceat(prog.costs[k], prog.starts[:-1]).sum())]); r += 1
        elif kind == "binding":
            rows.append(np.full(n, r)); cols.append(np.arange(n)); vals.append(s)
            lo.append([-np.inf]); up.append([1.0]); r += 1
            binding.append((k, s))
    # one-hot RLT: for option i and other layer m, sum_{j in m} y_ij - x_i = 0
    opt_i, lay_m = np.nonzero(layer[:, None] != np.arange(L)[None, :])
    n_eq = len(opt_i)
    counts = np.diff(prog.starts)
    reps = counts[lay_m]
    row_ids = r + np.repeat(np.arange(n_eq), reps)
    js = np.concatenate([prog.options_of(m) for m in range(L)])
    start_of = prog.starts[:-1]
    # the options of layer m for each row, flattened
    offs = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    j_flat = np.repeat(start_of[lay_m], reps) + offs
    i_flat = np.repeat(opt_i, reps)
    rows.append(row_ids); cols.append(pair_of[i_flat, j_flat]); vals.append(np.ones(len(j_flat)))
    rows.append(r + np.arange(n_eq)); cols.append(opt_i); vals.append(-np.ones(n_eq))
    lo.append(np.zeros(n_eq)); up.append(np.zeros(n_eq)); r += n_eq
    del js
    budget_rows = np.full((len(prog.caps), n), -1, dtype=np.int64)
    for k, s in binding if budget_rlt else ():
        chosen = np.arange(n) if rlt_options is None else np.asarray(rlt_options)
        for i in chosen:
            others = np.nonzero((layer != layer[i]) & (s > 0))[0]
            rows.append(np.full(len(others) + 1, r))
            cols.append(np.concatenate([[i], pair_of[i, others]]))
            vals.append(np.concatenate([[s[i] - 1.0], s[others]]))
            lo.append([-np.inf]); up.append([0.0])
            budget_rows[k, i] = r
            r += 1
            if budget_rlt_complement:
                # s'x - s_i x_i - sum_j s_j y_ij <= 1 - x_i
                rows.append(np.full(n + len(others), r))
                cols.append(np.concatenate([np.arange(n), pair_of[i, others]]))
                v = s.copy(); v[i] = v[i] - s[i] + 1.0
                vals.append(np.concatenate([v, -s[others]]))
                lo.append([-np.inf]); up.append([1.0])
                r += 1
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n + P))
    A.sum_duplicates()
    return LinearModel(c=c, offset=float(prog.offset), A=A, row_lower=np.concatenate([np.asarray(v, float) for v in lo]),
                       row_upper=np.concatenate([np.asarray(v, float) for v in up]), col_lower=np.zeros(n + P),
                       col_upper=np.ones(n + P), n_x=n, first=first, second=second, budget_rlt_rows=budget_rows)


def lagrangian_bound(model: LinearModel, row_dual: np.ndarray, fixed_lower=None, fixed_upper=None):
    """A lower bound on the linear program's optimum valid for any row multipliers: with
    d = c - A'π, every feasible v has c'v >= Σ_r min(π_r lo_r, π_r up_r) + Σ_j min(d_j l_j, d_j u_j).
    Multipliers of the wrong sign for a one-sided row are set to 0. Returns (bound, d)."""
    pi = np.asarray(row_dual, dtype=float).copy()
    pi[(pi > 0) & ~np.isfinite(model.row_lower)] = 0.0
    pi[(pi < 0) & ~np.isfinite(model.row_upper)] = 0.0
    d = model.c - model.A.T @ pi
    rows = np.where(pi > 0, pi * np.where(np.isfinite(model.row_lower), model.row_lower, 0.0),
                    pi * np.where(np.isfinite(model.row_upper), model.row_upper, 0.0))
    lo = model.col_lower if fixed_lower is None else fixed_lower
    up = model.col_upper if fixed_upper is None else fixed_upper
    cols = np.minimum(d * lo, d * up)
    return float(rows.sum() + cols.sum() + model.offset), d

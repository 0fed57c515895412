"""The statistics clado reports beside its numbers (docs/methods.md, "Noise"): standard errors
of batch-combined sensitivities and of top-1, and exact McNemar tests for paired comparisons
of two models on the same images. numpy only."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np


def weighted_se(values: Sequence[np.ndarray], weights: Sequence[float]) -> Optional[np.ndarray]:
    """Standard error of the sample-weighted mean of per-batch values (elementwise):
    sqrt(K/(K−1) · Σ_k w_k² (a_k − ā)²) with w_k = n_k / Σn. None for a single batch."""
    K = len(values)
    if K < 2:
        return None
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    a = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    mean = np.tensordot(w, a, axes=1)
    dev = a - mean
    return np.sqrt(K / (K - 1) * np.tensordot(w ** 2, dev ** 2, axes=1))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> Dict[str, float]:
    """Exact two-sided McNemar test on paired top-1 outcomes: only the images where exactly one
    model is right count; under "equally accurate" they split 50/50."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired outcomes need the same images")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    k = min(only_a, only_b)
    # P(X <= k) for X ~ Binomial(n, 1/2), doubled, capped at 1
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_first": only_a, "only_second": only_b, "p_value": min(1.0, 2 * tail),
            "difference": (only_a - only_b) / len(a) if len(a) else 0.0}


def paired_comparisons(rows) -> list:
    """McNemar tests on the same evaluation images: each decision against the widest uniform
    baseline that is no larger (the size-matched one), and decisions of different methods at
    the same budget against each other. Takes the per-image outcomes out of `rows` (they are
    not part of the reported rows)."""
    out = []
    for r in rows:
        r["_correct"] = r.pop("correct", None)
    uniform = sorted((r for r in rows if r["kind"] == "uniform" and r["_correct"] is not None),
                     key=lambda r: r["sizes"]["total_bytes"])
    decisions = [r for r in rows if r["kind"] == "decision" and r["_correct"] is not None]
    for d in decisions:
        fits = [u for u in uniform if u["sizes"]["total_bytes"] <= d["sizes"]["total_bytes"]]
        if fits and len(fits[-1]["_correct"]) == len(d["_correct"]):
            out.append({"first": d["label"], "second": fits[-1]["label"], **mcnemar(d["_correct"], fits[-1]["_correct"])})
    for i, a in enumerate(decisions):
        for b in decisions[i + 1:]:
            if a["budget"]["given"] == b["budget"]["given"] and a["method"] != b["method"] \
                    and len(a["_correct"]) == len(b["_correct"]):
                out.append({"first": a["label"], "second": b["label"], **mcnemar(a["_correct"], b["_correct"])})
    for r in rows:
        r.pop("_correct", None)
    return out

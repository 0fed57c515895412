"""Figures: the Pareto plot of `clado run` and the cross-layer heatmap of `clado inspect`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def x_of(row: Dict[str, Any], x: str):
    """A result row's position on the x axis `x` (size: total kB; bops: total GBOPs; another
    name: the decision's cost of that name, decided layers), None when the row has no such cost."""
    if x == "size":
        return row["sizes"]["total_bytes"] / 1e3
    if x == "bops":
        b = row.get("bops")
        return None if not b else b["total"] / 1e9
    return ((row.get("costs") or {}).get("decided") or {}).get(x)


X_LABELS = {"size": "model weight size (kB, decided + fixed layers)", "bops": "BOPs (G, MACs x w x a, decided + fixed layers)"}


def pareto_plot(rows: List[Dict[str, Any]], path: Path, title: str, x: str = "size") -> Path:
    """Top-1 against a cost (default the total model size): one line per method, uniform points
    marked, float as a line. Rows without the cost (e.g. uniform ones for a user table) are left out."""
    plt = _plt()
    rows = [r for r in rows if r["kind"] == "float" or x_of(r, x) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = sorted({r["method"] for r in rows if r["kind"] == "decision"})
    from .methods import METHODS

    for m in methods:
        pts = sorted((x_of(r, x), r["top1"], r.get("top1_se") or 0.0)
                     for r in rows if r["kind"] == "decision" and r["method"] == m)
        marker = METHODS.get(m).marker if m in METHODS else "o"
        # error bars: ±1.96 standard errors of top-1 (a 95% interval)
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[196 * p[2] for p in pts],
                    marker=marker, label=m, capsize=2)
    uni = [r for r in rows if r["kind"] == "uniform"]
    if uni:
        ax.scatter([x_of(r, x) for r in uni], [100 * r["top1"] for r in uni], marker="x",
                   s=80, color="black", label="uniform", zorder=5)
        for r in uni:
            ax.annotate(str(r.get("label", f"{r['bits']}-bit")).replace("uniform ", ""), (x_of(r, x), 100 * r["top1"]),
                        textcoords="offset points", xytext=(4, -12), fontsize=8)
    flt = [r for r in rows if r["kind"] == "float"]
    if flt:
        ax.axhline(100 * flt[0]["top1"], color="gray", linestyle="--", label=f"float ({100 * flt[0]['top1']:.2f}%)")
    ax.set_xlabel(X_LABELS.get(x, f"{x} (decided layers, from its cost table)"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def heatmap_plot(matrix: np.ndarray, names: List[str], path: Path, title: str) -> Path:
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)), dpi=120)
    vmax = float(np.abs(matrix).max()) or 1.0
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically: a failed write never leaves half a PNG."""
    import io

    from .store import atomic_write

    from .errors import UsageError

    if Path(path).suffix.lower() != ".png":
        raise UsageError(f"figure {path}: clado writes PNG figures; give a file name ending in .png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(Path(path), buf.getvalue())

"""Solver scale: CLADO programs (minimize x'Gx over one-hot x within a size budget) from small to
300+ binaries, every solver and formulation, a time limit, true objectives and true gaps.

    python bench/solve_scale.py                                 # the docs/solvers.md table
    python bench/solve_scale.py --instances resnet50x3,100x3 --time-limit 30
    python bench/solve_scale.py --cache ~/.cache/clado/<fingerprint> --instances cache,resnet50x3
    python bench/solve_scale.py --runs highs:exact,heuristic --json out.json

Instances (`--instances`, comma list; every one seeded by --seed):
  - `cache`: the real G of a CLADO cache directory (`--cache <cache>/<fingerprint>`: its
    manifest.json and the Ltilde/batch_*.npz files, all batches combined as `decide` does).
  - `<model>x<B>` (resnet18, resnet50, mobilenet_v2, efficientnet_b0; first and last layer left
    out, as clado fixes them): that model's decided layer sizes (weight counts of its Conv2d and
    Linear layers, tabled below; `--torchvision` recomputes them from torchvision, no weights)
    with B candidate widths.
  - `<L>x<B>`: L layers whose sizes are drawn from resnet50's layer sizes.
  G is then resampled from the base matrix onto those layers: the real G of `--cache` when
  given (each new layer copies a random base layer's blocks, jittered), else a synthetic
  CLADO-like G (per-layer sensitivity x quantization noise falling 4x per extra bit, cross-layer
  terms of random sign; indefinite like the real ones).
Budget: decided bytes = smallest + `--budget-fraction` x (largest - smallest).

Runs (`--runs`, comma list of solver:psd[:formulation] or `heuristic`): default every installed
solver with psd exact (default formulation), plus shift and clip on highs, plus the heuristic
alone (1 s). Formulations of exact (highs, scip): pair, pair+budget-rlt, root+pair+budget-rlt,
root-lazy+pair+budget-rlt (highs only). Each run goes through
clado_cli.optimize.solve_iqp with --time-limit. Columns: true objective x'Gx of the decision,
how much worse it is than the best known value of the instance (the least objective of all
runs), in % of |best|, the reported true gap (objective - bound)/|objective| in %, the status,
seconds; at the end the same runs side by side, one line per instance (true gap %, bound, seconds).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clado_cli.optimize import OptionSpace, g_from_ltilde, solve_iqp  # noqa: E402
from clado_cli.optimize.heuristic import OneHotProgram, incumbent  # noqa: E402

# Weight counts of Conv2d and Linear layers, in module order (torchvision, no weights).
NUMEL = {
    "resnet18": [9408, 36864, 36864, 36864, 36864, 73728, 147456, 8192, 147456, 147456, 294912, 589824, 32768,
                 589824, 589824, 1179648, 2359296, 131072, 2359296, 2359296, 512000],
    "resnet50": [9408, 4096, 36864, 16384, 16384, 16384, 36864, 16384, 16384, 36864, 16384, 32768, 147456, 65536,
                 131072, 65536, 147456, 65536, 65536, 147456, 65536, 65536, 147456, 65536, 131072, 589824, 262144,
                 524288, 262144, 589824, 262144, 262144, 589824, 262144, 262144, 589824, 262144, 262144, 589824,
                 262144, 262144, 589824, 262144, 524288, 2359296, 1048576, 2097152, 1048576, 2359296, 1048576,
                 1048576, 2359296, 1048576, 2048000],
    "mobilenet_v2": [864, 288, 512, 1536, 864, 2304, 3456, 1296, 3456, 3456, 1296, 4608, 6144, 1728, 6144, 6144,
                     1728, 6144, 6144, 1728, 12288, 24576, 3456, 24576, 24576, 3456, 24576, 24576, 3456, 24576,
                     24576, 3456, 36864, 55296, 5184, 55296, 55296, 5184, 55296, 55296, 5184, 92160, 153600, 8640,
                     153600, 153600, 8640, 153600, 153600, 8640, 307200, 409600, 1280000],
    "efficientnet_b0": [864, 288, 256, 256, 512, 1536, 864, 384, 384, 2304, 3456, 1296, 864, 864, 3456, 3456,
                        3600, 864, 864, 5760, 9600, 6000, 2400, 2400, 9600, 9600, 2160, 2400, 2400, 19200, 38400,
                        4320, 9600, 9600, 38400, 38400, 4320, 9600, 9600, 38400, 38400, 12000, 9600, 9600, 53760,
                        75264, 16800, 18816, 18816, 75264, 75264, 16800, 18816, 18816, 75264, 75264, 16800, 18816,
                        18816, 129024, 221184, 28800, 55296, 55296, 221184, 221184, 28800, 55296, 55296, 221184,
                        221184, 28800, 55296, 55296, 221184, 221184, 10368, 55296, 55296, 368640, 409600, 1280000],
}
WIDTHS = {2: [4, 8], 3: [2, 4, 8], 4: [2, 4, 6, 8], 5: [2, 3, 4, 6, 8]}
DEFAULT_INSTANCES = "resnet18x3,40x3,resnet50x3,64x3,49x4,100x3"


def torchvision_numel(name: str) -> List[int]:
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    return [m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def synthetic_g(space: OptionSpace, rng: np.random.Generator) -> np.ndarray:
    """A G shaped like the measured one of the embedded model (resnet-like, widths 2/4/8): single-
    option loss deltas d = a_l * 2^(-2.5 (bits - narrowest)) with a lognormal layer sensitivity
    a_l, plus noise of 2e-4 a (so wide options come out slightly negative, as measured), and
    cross-layer terms rho_lm * sqrt(|d_i d_j|) with rho ~ N(0, 1) on half of the layer pairs
    (the measured 2-bit x 2-bit terms reach 3x the diagonal); indefinite."""
    L = space.n_layers
    bits = np.array(space.candidates, dtype=float)
    a = rng.lognormal(-1.0, 1.0, size=L)
    d = a[:, None] * 2.0 ** (-2.5 * (bits - bits[0]))[None, :]
    d = (d + rng.normal(0.0, 2e-4, size=d.shape) * a.mean()).ravel()
    return g_from_singles(space, d, rng)


def g_from_singles(space: OptionSpace, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """G from single-option deltas d (one per option) and cross-layer terms rho_lm sqrt(|d_i d_j|),
    rho ~ N(0, 1) on half of the layer pairs, jittered 20% per option pair."""
    L, B = space.n_layers, len(space.candidates)
    rho = rng.normal(0.0, 1.0, size=(L, L)) * (rng.random((L, L)) < 0.5)
    rho = np.triu(rho, 1)
    rho = rho + rho.T
    R = np.kron(rho, np.ones((B, B))) * (1.0 + 0.2 * rng.normal(size=(L * B, L * B)))
    R = (R + R.T) / 2.0
    cross = R * np.sqrt(np.abs(np.outer(d, d)))
    Lt = np.diag(d) + cross + (d[:, None] + d[None, :]) * (1 - np.eye(L * B))
    # G[i,j] = Lt[i,j] - Lt[i,i] - Lt[j,j] = cross[i,j] across layers; G[i,i] = 2 d_i
    return g_from_ltilde(Lt, space)


def cache_g(cache_dir: str) -> Tuple[OptionSpace, np.ndarray]:
    """The space and G of a real CLADO cache directory (<cache>/<fingerprint>)."""
    from clado_cli.methods.base import space_of
    from clado_cli.methods.clado import Clado
    from clado_cli.store.cache import Cache

    cache = Cache.from_dir(Path(cache_dir))
    vals, _, _ = cache.combine(Clado.stored)[:3]
    space = space_of(cache.manifest)
    return space, g_from_ltilde(vals["Ltilde"], space)


def width_weights(base: List[int], target: List[int]) -> np.ndarray:
    """(target x base) weights: a width the base has copies it; one between two base widths a < b
    is the mix (1 - t) a + t b with t = (1 - 4^-(w-a)) / (1 - 4^-(b-a)), which puts a diagonal
    entry (quantization noise power, falling 4x per bit) where 4^-bits puts it. The measured G has
    widths 2/4/8, so a 4-width instance (2/4/6/8) gets its 6-bit options this way: an
    interpolation, not a measurement."""
    W = np.zeros((len(target), len(base)))
    for r, w in enumerate(target):
        if w in base:
            W[r, base.index(w)] = 1.0
            continue
        k = int(np.searchsorted(base, w)) - 1
        if k < 0 or k + 1 >= len(base):
            raise SystemExit(f"width {w} is outside the measured widths {base}")
        a, b = base[k], base[k + 1]
        t = (1 - 4.0 ** -(w - a)) / (1 - 4.0 ** -(b - a))
        W[r, k], W[r, k + 1] = 1 - t, t
    return W


def resample_g(base_space: OptionSpace, G: np.ndarray, space: OptionSpace, rng: np.random.Generator) -> np.ndarray:
    """G for `space` from a real one: every new layer copies a random base layer (diagonal blocks
    from it, cross blocks from the base pair, a random other pair when both copy the same one),
    every block jittered by a lognormal factor (sigma 0.1). Widths the base lacks are
    interpolated (width_weights; cross blocks W G W', diagonals W diag)."""
    B0, B = len(base_space.candidates), len(space.candidates)
    W = width_weights(list(base_space.candidates), list(space.candidates))
    L0, L = base_space.n_layers, space.n_layers
    pick = rng.integers(L0, size=L)
    out = np.zeros((L * B, L * B))
    for l in range(L):
        for m in range(l, L):
            p, q = pick[l], pick[m]
            if l != m and p == q:
                q = int(rng.choice(np.delete(np.arange(L0), p)))
            block = G[p * B0:(p + 1) * B0, q * B0:(q + 1) * B0] * rng.lognormal(0.0, 0.1)
            block = np.diag(W @ np.diag(block)) if l == m else W @ block @ W.T
            out[l * B:(l + 1) * B, m * B:(m + 1) * B] = block
            out[m * B:(m + 1) * B, l * B:(l + 1) * B] = block.T
    return out


def make_instance(name: str, widths: int, seed: int, args) -> Tuple[str, OptionSpace, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    base = cache_g(args.cache) if args.cache else None
    if name == "cache":
        if base is None:
            raise SystemExit("instance 'cache' needs --cache <cache>/<fingerprint>")
        space, G = base
        label = f"cache {space.n_layers}x{len(space.candidates)}"
    else:
        what, _, b = name.partition("x")
        n_widths = int(b) if b else widths
        candidates = base[0].candidates if base and (not b or n_widths == len(base[0].candidates)) else WIDTHS[n_widths]
        if what in NUMEL:
            table = torchvision_numel(what) if args.torchvision else NUMEL[what]
            numel = table[1:-1]
        else:
            numel = list(rng.choice(NUMEL["resnet50"][1:-1], size=int(what)))
        space = OptionSpace([f"l{i}" for i in range(len(numel))], candidates, numel)
        G = resample_g(base[0], base[1], space, rng) if base else synthetic_g(space, rng)
        label = f"{name} ({space.n_layers}x{len(space.candidates)}{(', real G resampled' + (', widths interpolated' if len(candidates) != len(base[0].candidates) else '')) if base else ''})"
    low, high = space.min_bytes(), space.max_bytes()
    budget = int(low + args.budget_fraction * (high - low))
    return label, space, G, budget


def run_one(run: str, G, space, budget, time_limit) -> Dict:
    started = time.perf_counter()
    if run == "heuristic":
        B = len(space.candidates)
        prog = OneHotProgram(G, space.option_layers(), np.outer(space.numel, space.candidates).ravel(), 8 * budget)
        opts = incumbent(prog, time_limit=min(1.0, time_limit))
        choice = [int(o) % B for o in opts]
        x = space.one_hot(choice)
        return {"run": run, "objective": float(x @ G @ x), "gap": None, "bound": None, "status": "heuristic",
                "seconds": time.perf_counter() - started}
    solver, _, rest = run.partition(":")
    psd, _, formulation = rest.partition(":")
    try:
        r = solve_iqp(G, space, budget, psd=psd or "exact", solver=solver, time_limit=time_limit,
                      formulation=formulation or None if (psd or "exact") == "exact" else None)
    except Exception as exc:  # a refusal or a failure is a row of the table too
        return {"run": run, "objective": None, "gap": None, "bound": None, "status": f"error: {exc}"[:60],
                "seconds": time.perf_counter() - started}
    return {"run": run, "objective": r.objective, "gap": r.gap, "bound": r.best_bound, "status": r.status,
            "seconds": r.seconds, "root_bound": getattr(r, "root_bound", None), "note": r.solver_note}


def default_runs() -> List[str]:
    import cvxpy as cp

    installed = cp.installed_solvers()
    runs = [f"{s}:exact" for s in ("highs", "scip", "gurobi") if s.upper() in installed]
    runs += ["auto:exact", "highs:shift", "highs:clip", "heuristic"]
    return runs


def side_by_side(rows: List[Dict], runs: List[str]) -> None:
    """One markdown line per instance, per run: true gap %, bound, seconds (the runs side by side)."""
    print("\n| instance | binaries | best known | " + " | ".join(f"{r}: gap %, bound, s" for r in runs) + " |")
    print("|---|---|---|" + "---|" * len(runs))
    for label in dict.fromkeys(r["instance"] for r in rows):
        mine = {r["run"]: r for r in rows if r["instance"] == label}
        cells = []
        for run in runs:
            r = mine[run]
            gap = "—" if r["gap"] is None else f"{100 * r['gap']:.3g}"
            bound = "—" if r.get("bound") is None else f"{r['bound']:.6g}"
            cells.append(f"{gap}, {bound}, {r['seconds']:.1f}{' (optimal)' if r['status'] == 'optimal' else ''}")
        first = mine[runs[0]]
        best = "—" if first["best_known"] is None else f"{first['best_known']:.6g}"
        print(f"| {label} | {first['binaries']} | {best} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default=DEFAULT_INSTANCES)
    ap.add_argument("--runs", default=None, help="comma list of solver:psd[:formulation] (e.g. highs:exact, "
                    "highs:exact:pair+budget-rlt, scip:shift) or heuristic")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--widths", type=int, default=3, help="candidate widths for <model> instances without xB")
    ap.add_argument("--budget-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="a CLADO cache directory <cache>/<fingerprint>")
    ap.add_argument("--torchvision", action="store_true", help="recompute layer sizes from torchvision")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    runs = args.runs.split(",") if args.runs else default_runs()
    rows = []
    for k, name in enumerate(args.instances.split(",")):
        label, space, G, budget = make_instance(name.strip(), args.widths, args.seed + k, args)
        results = [run_one(r, G, space, budget, args.time_limit) for r in runs]
        values = [r["objective"] for r in results if r["objective"] is not None]
        best = min(values) if values else None
        print(f"\n{label}: {space.n_options} binaries, budget {budget} B, best known {best:.6g}", flush=True)
        print(f"  {'run':<34} {'objective':>12} {'worse %':>8} {'gap %':>9} {'bound':>12} {'status':<12} {'seconds':>8}")
        for r in results:
            obj = r["objective"]
            ratio = f"{100 * (obj - best) / abs(best):8.3g}" if obj is not None and best else " " * 8
            gap = f"{100 * r['gap']:9.3g}" if r["gap"] is not None else " " * 9
            objs = f"{obj:12.6g}" if obj is not None else " " * 12
            bound = f"{r['bound']:12.6g}" if r.get("bound") is not None else " " * 12
            print(f"  {r['run']:<34} {objs} {ratio} {gap} {bound} {r['status']:<12} {r['seconds']:8.2f}", flush=True)
            rows.append({"instance": label, "binaries": space.n_options, "budget": budget, "best_known": best, **r})
    side_by_side(rows, runs)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

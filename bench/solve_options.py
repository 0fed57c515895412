"""CLADO programs with (weight, activation) options: ResNet-18 and ResNet-50 with 5 options per
decided layer ([2,8], [4,4], [4,8], [8,4], [8,8]: 95 and 260 binaries), under a size budget
and an activation-memory budget at once — the set-up the research code behind the paper could
not solve (Gurobi never terminated, SCIP gave wrong answers).

    python bench/solve_options.py                      # both models, 60 s limit
    python bench/solve_options.py --models resnet18 --time-limit 20 --json out.json

Layer sizes and input-activation element counts come from torchvision's models at 224x224 (no
weights; one forward pass with hooks). G is synthetic and CLADO-like (bench/solve_scale.py's
construction, with each option's quantization noise falling 4x per extra weight bit and 2x per
extra activation bit). Budgets: size = smallest + f_size x (largest - smallest), activation
memory (sum of input bytes) = rel:f_act. Printed per run: the true objective x'Gx, the true gap
(objective - bound) / |objective| in %, the status, seconds, and which budgets bind.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clado_cli.optimize import OptionSpace, solve_iqp  # noqa: E402
from clado_cli.optimize.constraints import Constraints, CostRow, Reduction, size_row  # noqa: E402
from clado_cli.optimize.heuristic import incumbent  # noqa: E402
from solve_scale import g_from_singles  # noqa: E402  (bench/, the same construction)

OPTIONS = [(2, 8), (4, 4), (4, 8), (8, 4), (8, 8)]


def layers_of(name: str) -> Tuple[List[int], List[int]]:
    """Weight counts and input-activation elements (batch 1, 224x224) of the Conv2d/Linear layers,
    first and last left out (clado fixes them)."""
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    numel, elements, hooks = [], [], []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: elements.append(int(inp[0].numel()))))
            numel.append(int(m.weight.numel()))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return numel[1:-1], elements[1:-1]


def synthetic_g(space: OptionSpace, rng: np.random.Generator) -> np.ndarray:
    L = space.n_layers
    w = np.array(space.candidates, dtype=float)
    a = np.array(space.act_bits, dtype=float)
    sens = rng.lognormal(-1.0, 1.0, size=L)
    d = sens[:, None] * (2.0 ** (-2.0 * (w - 2)) + 0.5 * 2.0 ** (-1.0 * (a - 4)))[None, :]
    d = (d + rng.normal(0.0, 2e-4, size=d.shape) * sens.mean()).ravel()
    return g_from_singles(space, d, rng)


def instance(model: str, f_size: float, f_act: float, seed: int):
    numel, elements = layers_of(model)
    space = OptionSpace([f"l{i}" for i in range(len(numel))], [w for w, _ in OPTIONS], numel,
                        act_bits=[a for _, a in OPTIONS])
    G = synthetic_g(space, np.random.default_rng(seed))
    low, high = space.min_bytes(), space.max_bytes()
    budget = int(low + f_size * (high - low))
    act = space.activation_bytes(elements) * 8.0  # bits: compared exactly
    lo = float(act.reshape(space.n_layers, -1).min(axis=1).sum())
    hi = float(act.reshape(space.n_layers, -1).max(axis=1).sum())
    row = CostRow("act_memory", act, np.floor((lo + f_act * (hi - lo)) / 8.0) * 8.0, unit="bytes", scale=8.0)
    return space, G, budget, Constraints([row])


def run(model: str, args) -> List[Dict]:
    space, G, budget, cons = instance(model, args.size_fraction, args.act_fraction, args.seed)
    label = f"{model} {space.n_layers}x{len(space.candidates)} ({space.n_options} binaries)"
    out = []
    red = Reduction(space, cons.with_row(size_row(space, budget)))

    t = time.perf_counter()
    opts = incumbent(red.program(G), time_limit=1.0)
    x = space.one_hot(red.choice(opts)) if opts is not None else None
    out.append({"instance": label, "run": "heuristic (1 s)", "objective": None if x is None else float(x @ G @ x),
                "gap_percent": None, "status": "heuristic", "seconds": time.perf_counter() - t})
    for solver in args.solvers.split(","):
        try:
            r = solve_iqp(G, space, budget, psd="exact", solver=solver, time_limit=args.time_limit, constraints=cons)
            out.append({"instance": label, "run": f"{solver}:exact", "objective": r.objective, "gap_percent": r.gap_percent,
                        "status": r.status, "seconds": r.seconds,
                        "binding": [c["name"] for c in r.constraints if c["binding"]]})
        except Exception as exc:  # a refusal is a row too
            out.append({"instance": label, "run": f"{solver}:exact", "objective": None, "gap_percent": None,
                        "status": f"error: {exc}"[:70], "seconds": None})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--solvers", default="highs")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--size-fraction", type=float, default=0.3)
    ap.add_argument("--act-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = [r for m in args.models.split(",") for r in run(m, args)]
    print("| instance | run | objective x'Gx | true gap | status | seconds | binding |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        obj = "-" if r["objective"] is None else f"{r['objective']:.6g}"
        gap = "-" if r["gap_percent"] is None else f"{r['gap_percent']:.3g}%"
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        print(f"| {r['instance']} | {r['run']} | {obj} | {gap} | {r['status']} | {sec} | {', '.join(r.get('binding', []))} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

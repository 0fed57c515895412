"""The dry-run estimate of `clado prep` against the measured time, side by side in one run.

    python bench/dry_run.py                         # both set-ups, every method
    python bench/dry_run.py --setups demo --json out.json

For every set-up and every prep (CLADO with either engine, MPQCO with either engine, HAWQ with
either estimator) in a fresh cache: the quantizers are calibrated first (outside both timings,
as `clado prep` calibrates before its clock starts), then `clado prep --dry-run`'s estimate is
taken (its own wall time is reported as `probe s`), then the prep runs for real and its
summary's `seconds` is the measured time. ratio = estimate / measured (1 is perfect; the goal
is within 1/1.5..1.5). naive has no prep of its own: it reads CLADO's cache, so its cost is
CLADO's (the row repeats the CLADO fast figures).

Set-ups (no downloads; the embedded model trains once into $CLADO_HOME):
  - demo: configs/demo.yaml (embedded residual CNN, digits, batches 0..3 of 32);
  - resnet18: torchvision resnet18, random weights, synthetic 3x32x32 inputs, 10 classes,
    batches 0..1 of 16 (the kind of model and input the tests use), HAWQ at most 20 probes.
Clocks: `--clock wall` (default) times what a user waits for. `--clock cpu` makes every clock
of this process (time.time, time.perf_counter) read its own CPU time instead, with one torch
thread, so that other jobs on a shared machine skew neither the probe nor the run: the
estimator's own accuracy. `--reps N` repeats each pair and prints the median ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETUPS = {
    "demo": (str(ROOT / "configs" / "demo.yaml"), {}),
    "resnet18": (None, {"model.name": "resnet18", "model.weights": "none", "model.num_classes": 10,
                        "data.dataset": "synthetic:3x32x32:10", "data.bs": 16, "data.sb": 0, "data.eb": 1,
                        "data.calibration_size": 64, "prep.hawq_max_iter": 20}),
}
PREPS = [("clado", {"prep.engine": "fast"}, "clado fast"),
         ("clado", {"prep.engine": "reference"}, "clado reference"),
         ("mpqco", {"prep.engine": "fast"}, "mpqco fast"),
         ("mpqco", {"prep.engine": "reference"}, "mpqco reference"),
         ("hawq", {"prep.hawq_estimator": "per-layer"}, "hawq per-layer"),
         ("hawq", {"prep.hawq_estimator": "all-layers"}, "hawq all-layers")]


def one(config, overrides, method, extra, cache_dir):
    from clado_cli.config import load_config
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    cfg = load_config(config, {**overrides, **extra, "cache_dir": str(cache_dir), "device": "cpu"})
    s = Session(cfg, log_fn=lambda *a: None)
    s.qmodel  # noqa: B018  calibrate outside both timings
    t = time.time()
    plan = run_prep(s, method, cfg.data.sb, cfg.data.eb, dry_run=True)
    probe = time.time() - t
    done = run_prep(s, method, cfg.data.sb, cfg.data.eb)
    est, meas = plan["estimated_seconds"], done["seconds"]
    return {"estimate": est, "measured": meas, "ratio": est / meas if meas else None, "probe_seconds": round(probe, 2),
            "batches": len(done["computed"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))
    ap.add_argument("--preps", default="", help="comma-separated names (e.g. 'clado fast,hawq per-layer'); default all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        torch.set_num_threads(1)
        time.time = time.perf_counter = time.process_time
    wanted = [p for p in args.preps.split(",") if p]
    rows = []
    print(f"{'set-up':10} {'prep':18} {'batches':>7} {'estimate s':>11} {'measured s':>11} {'ratio':>6} {'probe s':>8}")
    for setup in [s for s in args.setups.split(",") if s]:
        config, overrides = SETUPS[setup]
        clado_fast = None
        for method, extra, label in PREPS:
            if wanted and label not in wanted:
                continue
            reps = []
            for _ in range(max(1, args.reps)):
                with tempfile.TemporaryDirectory() as tmp:
                    reps.append(one(config, overrides, method, extra, Path(tmp) / "cache"))
            r = sorted(reps, key=lambda q: q["ratio"])[len(reps) // 2]     # the median ratio's pair
            r.update(setup=setup, prep=label, clock=args.clock, ratios=[round(q["ratio"], 3) for q in reps])
            rows.append(r)
            clado_fast = r if label == "clado fast" else clado_fast
            print(f"{setup:10} {label:18} {r['batches']:>7} {r['estimate']:>11.2f} {r['measured']:>11.2f} "
                  f"{r['ratio']:>6.2f} {r['probe_seconds']:>8.2f}", flush=True)
        if clado_fast is not None:
            print(f"{setup:10} {'naive (= clado)':18} {clado_fast['batches']:>7} {clado_fast['estimate']:>11.2f} "
                  f"{clado_fast['measured']:>11.2f} {clado_fast['ratio']:>6.2f} {'-':>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

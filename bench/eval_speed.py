"""Evaluation speed: the float model and fake-quantized models (uniform and mixed decisions)
evaluated side by side on the same images, with the ratio to the float model's time.

    python bench/eval_speed.py                     # a residual CNN on 10,000 28x28 images
    python bench/eval_speed.py --n 2000 --reps 3 --threads 1
    python bench/eval_speed.py --json out.json

The set-up mirrors issue 14's Fashion-MNIST case without its data: random-but-fixed IDX files
(10,000 test images of 28x28, 2,048 training images for calibration) written into a temporary
directory, and a small residual CNN (seeded random weights; accuracy is not the point, time is).
Each model state is evaluated --reps times with the states alternating; the best wall-clock
time is reported with images per second and the ratio to float. The target (issue 14): a
fake-quant evaluation within 1.5x of the float model's time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = '''
import torch.nn as nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False); self.na = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, c, 3, padding=1, bias=False); self.nb = nn.BatchNorm2d(c)
    def forward(self, x):
        return F.relu(x + self.nb(self.b(F.relu(self.na(self.a(x))))))

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.b1 = Block(32)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.b2 = Block(64)
        self.b3 = Block(64)
        self.fc = nn.Linear(64, num_classes)
    def forward(self, x):
        x = F.relu(self.stem(x)); x = self.b1(x); x = F.relu(self.down(x)); x = self.b3(self.b2(x))
        return self.fc(x.mean((2, 3)))

def net(num_classes=10):
    return Net(num_classes)
'''


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="test images")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)

    import torch

    from clado_cli.config import load_config
    from clado_cli.evaluate import evaluate_current
    from clado_cli.session import Session

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="clado-eval-speed-"))
    g = np.random.default_rng(0)
    _write_idx(tmp / "train-images-idx3-ubyte", g.integers(0, 256, (2048, 28, 28)))
    _write_idx(tmp / "train-labels-idx1-ubyte", g.integers(0, 10, 2048))
    _write_idx(tmp / "t10k-images-idx3-ubyte", g.integers(0, 256, (args.n, 28, 28)))
    _write_idx(tmp / "t10k-labels-idx1-ubyte", g.integers(0, 10, args.n))
    (tmp / "net.py").write_text(MODEL)
    cfg = load_config(None, {"model.name": f"{tmp}/net.py:net", "model.weights": "none", "data.dataset": f"idx:{tmp}",
                             "device": "cpu", "cache_dir": str(tmp / "cache"), "data.calibration_size": 512,
                             "threads": args.threads})
    s = Session(cfg, log_fn=lambda m: None)
    qm = s.qmodel
    names = s.plan.decided_names
    mixed = {n: [2, 4, 8][i % 3] for i, n in enumerate(names)}
    states = {"float": lambda: qm.reset(), "uniform 8-bit": lambda: qm.set_uniform(8),
              "uniform 4-bit": lambda: qm.set_uniform(4), "mixed 2/4/8": lambda: qm.set_decision(mixed)}
    best = {k: float("inf") for k in states}
    for _ in range(args.reps):
        for k, apply in states.items():
            apply()
            t = time.perf_counter()
            m = evaluate_current(s)
            best[k] = min(best[k], time.perf_counter() - t)
            qm.reset()
    rows = [{"state": k, "seconds": round(v, 3), "images_per_second": round(m["samples"] / v, 1),
             "ratio_to_float": round(v / best["float"], 3)} for k, v in best.items()]
    print(f"{args.n} images of 1x28x28, residual CNN ({len(names)} decided layers), {args.threads} thread(s), "
          f"best of {args.reps}")
    print(f"{'state':<16}{'seconds':>10}{'images/s':>12}{'x float':>10}")
    for r in rows:
        print(f"{r['state']:<16}{r['seconds']:>10.3f}{r['images_per_second']:>12.1f}{r['ratio_to_float']:>10.2f}")
    worst = max(r["ratio_to_float"] for r in rows)
    print(f"worst fake-quant / float: {worst:.2f}x (target: within 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "n": args.n, "threads": args.threads}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Result quality: where each method wins, and by how much, measured with intervals.

For two real models — clado's embedded residual CNN on digits, and a plain VGG-style CNN this
script trains on digits in seconds (a second architecture, no residual paths) — run the whole
pipeline (prep every method on the same sensitivity batches, optimize a sweep of average-bit
budgets with every PSD treatment of CLADO, evaluate beside uniform baselines), then print:

  - per budget and method: top-1 ± 1.96 SE, predicted vs measured loss increase;
  - McNemar p-values against the size-matched uniform baseline and between methods;
  - a Markdown table (for docs/quality.md) of where each method wins.

    python bench/quality.py                  # both models, default sweep
    python bench/quality.py --json out.json --psd clip,exact

Nothing here is timed: the numbers are accuracies and losses, the same on any machine up to
floating-point summation order.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VGG_SOURCE = '''
import torch.nn as nn


def vgg_digits(num_classes=10):
    """A plain CNN (no skip connections) for 8x8 digits."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32), *block(32, 64),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))
'''


def train_vgg(path: Path, factory_file: Path) -> None:
    """Train the VGG-style CNN on the digits training split (seeded, ~20 epochs of Adam)."""
    from clado_cli.data import load_data

    factory_file.write_text(VGG_SOURCE)
    ns = {}
    exec(compile(VGG_SOURCE, str(factory_file), "exec"), ns)
    torch.manual_seed(0)
    model = ns["vgg_digits"]()
    data = load_data("digits")
    x, y = data.train.images, data.train.labels
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            j = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[j]), y[j]).backward()
            opt.step()
    torch.save(model.state_dict(), path)


def run(model_overrides: dict, label: str, budgets, psds, cache_dir: Path, out_dir: Path, refine: int = 3) -> dict:
    from clado_cli.config import load_config
    from clado_cli.decide import decide, decide_alternatives
    from clado_cli.refine import refine as refine_decisions
    from clado_cli.evaluate import evaluate_decision, evaluate_uniform
    from clado_cli.measure import measure_decisions
    from clado_cli.optimize import resolve_budget_spec
    from clado_cli.prep import run_prep
    from clado_cli.session import Session
    from clado_cli.stats import paired_comparisons

    cfg = load_config(ROOT / "configs" / "demo.yaml", {**model_overrides, "cache_dir": str(cache_dir)})
    s = Session(cfg)
    for m in ("clado", "mpqco", "hawq"):
        run_prep(s, m, cfg.data.sb, cfg.data.eb)
    numel = sum(l.numel for l in s.plan.decided)
    resolved = [resolve_budget_spec(b, numel) for b in budgets]
    rows = evaluate_uniform(s, cfg.quant.weight_candidates)
    ks = list(range(cfg.data.sb, cfg.data.eb + 1))
    decisions = []
    for psd in psds:
        decisions += decide(s.cache, ["clado"], resolved, psd=psd, ks=ks)
    if refine > 1:   # refined CLADO (exact): the best measured of the K best distinct decisions
        groups = decide_alternatives(s.cache, ["clado"], resolved, psd="exact", ks=ks, k_best=refine)
        decisions += refine_decisions(s, groups, refine)
    decisions += decide(s.cache, ["naive", "mpqco", "hawq"], resolved, ks=ks)
    for d, measured in zip(decisions, measure_decisions(s, decisions)):
        d["measured"] = measured
        rows.append(evaluate_decision(s, d))
    comparisons = paired_comparisons(rows)
    changed = [d for d in decisions if d.get("refine")]
    return {"model": label, "rows": rows, "comparisons": comparisons,
            "refine": {"k": refine, "decisions": len(changed), "changed": sum(d["refine"]["changed"] for d in changed)}}


def markdown(result: dict, budgets) -> str:
    rows = result["rows"]
    labels = sorted({r["label"].split(" @ ")[0] for r in rows if r["kind"] == "decision"})
    lines = [f"### {result['model']}", "",
             "| budget | " + " | ".join(labels) + " | best uniform that fits |", "|---" * (len(labels) + 2) + "|"]
    for b in budgets:
        cells = []
        at = {r["label"].split(" @ ")[0]: r for r in rows if r["kind"] == "decision" and r["budget"]["given"] == b}
        best = max((r["top1"] for r in at.values()), default=None)
        for name in labels:
            r = at.get(name)
            if r is None:
                cells.append("")
                continue
            text = f"{100 * r['top1']:.2f} ± {196 * r['top1_se']:.2f}"
            cells.append(f"**{text}**" if r["top1"] == best else text)
        total = max((r["sizes"]["total_bytes"] for r in at.values()), default=0)
        fits = [u for u in rows if u["kind"] == "uniform" and u["sizes"]["total_bytes"] <= total]
        uni = max(fits, key=lambda u: u["sizes"]["total_bytes"]) if fits else None
        cells.append(f"{uni['label']}: {100 * uni['top1']:.2f}" if uni else "none")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    ref = result.get("refine") or {}
    if ref.get("decisions"):
        lines += ["", f"Refinement (best measured of the {ref['k']} best): kept another choice than the program's "
                      f"optimum at {ref['changed']} of {ref['decisions']} budgets."]
    sig = [c for c in result["comparisons"] if c["p_value"] < 0.05]
    lines += ["", f"Paired differences with McNemar p < 0.05: {len(sig)} of {len(result['comparisons'])}."]
    for c in sig:
        lines.append(f"- {c['first']} vs {c['second']}: {100 * c['difference']:+.2f} points (p = {c['p_value']:.3g})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="avg:2.5,avg:3,avg:3.5,avg:4,avg:5")
    ap.add_argument("--psd", default="clip,shift", help="CLADO PSD treatments to compare (comma list)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--refine", type=int, default=3, help="K for refined CLADO (1: leave it out)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = args.budgets.split(",")
    psds = args.psd.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights, factory = tmp / "vgg.pt", tmp / "vgg_digits.py"
        train_vgg(weights, factory)
        results = [run({}, "embedded residual CNN on digits", budgets, psds, tmp / "cache", tmp, args.refine),
                   run({"model.name": f"{factory}:vgg_digits", "model.weights": str(weights)},
                       "VGG-style CNN on digits (trained by this script)", budgets, psds, tmp / "cache", tmp, args.refine)]
    for r in results:
        print(markdown(r, budgets))
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()

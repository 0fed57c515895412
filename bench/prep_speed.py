"""Prep speed: seconds per batch of every engine of every method, side by side in one run.

    python bench/prep_speed.py                      # embedded model (bs 64 and 16) and resnet18
    python bench/prep_speed.py --models resnet18 --methods clado
    python bench/prep_speed.py --hawq-study         # the HAWQ estimator study of docs/performance.md
    python bench/prep_speed.py --json out.json      # also write every figure as JSON

Models (no download): the embedded digits model (trained once into $CLADO_HOME on first use,
cached after) at the default batch size 64 and at 16; torchvision resnet18 with random
weights (seed 0), 10 classes, random-but-fixed 64x64 inputs, batch 16, calibrated on two
random batches (the calibration is cached in $CLADO_HOME/bench-cache).

CLADO engines:
  - seed-style: what the original code does: a deep copy of the QuantModel for every
    measurement, options applied with fake-quant on the fly, one full forward pass. Too slow to
    run whole on resnet18, so it runs L0 plus a seeded random sample of the other measurements
    (--seed-measurements, 0 = all) and its seconds per batch are EXTRAPOLATED: mean seconds
    per measurement x measurements per batch (the deep copy and the forward pass cost the same
    for every measurement). The sampled entries are compared with the fast engine's.
  - reference: clado_reference, one full forward pass per measurement, no copies.
  - fast: clado_fast (the default engine); first batch (includes the runner's one-time
    verification of stacked passes) and a second batch (steady state) are both timed.
MPQCO: mpqco_reference (per-sample loop) vs mpqco_fast. HAWQ: the per-layer and the all-layers
Hutchinson estimators with the same fixed number of probes (no early stop).

Memory: "peak" is the most bytes of torch tensors alive at once during a call beyond those
alive before it, counted exactly from the allocation and free events of torch's profiler
(profile_memory=True): the CPU analogue of torch.cuda.max_memory_allocated, blind to malloc's
caches. It is measured in a separate, profiled run of each engine (timed runs are never
profiled). "persistent" is the bytes of the QuantModel's parameters, buffers and
quantized-weight cache, resident whatever the engine runs; "total" = persistent + peak.
The seed-style engine's profiled run is 8 measurements (each allocates a whole model copy).
Timing: wall-clock seconds, best of --reps runs with the engines alternating (CPU seconds too);
on a machine shared with other jobs, compare the ratios, which are measured side by side.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- measuring ------------------------------------------------------------------------------

DEVICE = "cpu"      # set by --device; on CUDA, timings synchronize and peaks come from the allocator


def _sync():
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn):
    """(result, wall seconds, cpu seconds)."""
    import gc

    gc.collect()
    _sync()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync()
    return out, time.perf_counter() - w, time.process_time() - c


def tensor_peak(fn):
    """(result, peak bytes of torch tensors alive at once during fn beyond those alive before):
    clado_cli.prep.memory.tensor_peak on this run's device."""
    from clado_cli.prep.memory import tensor_peak as peak

    return peak(fn, DEVICE)


def best_of(reps: int, fns: dict) -> dict:
    """Run the functions alternately `reps` times; keep each one's fastest (result, wall, cpu)."""
    best = {}
    for _ in range(max(1, reps)):
        for name, fn in fns.items():
            r = timed(fn)
            if name not in best or r[1] < best[name][1]:
                best[name] = r
    return best


def mb(b):
    return None if b is None else round(b / 1e6, 2)


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda_used": DEVICE == "cuda", "gpu": gpu, "platform": platform.platform()}


# -- models ---------------------------------------------------------------------------------

def embedded_setup(bs: int):
    from clado_cli.config import load_config
    from clado_cli.session import Session

    home = Path(os.environ["CLADO_HOME"])
    cfg = load_config(None, {"data.bs": bs, "cache_dir": str(home / "bench-cache"), "device": DEVICE})
    s = Session(cfg, log_fn=lambda *_: None)
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    return {"name": f"embedded bs{bs}", "model": s.float_model, "qm": qm, "x": x, "y": y,
            "desc": f"embedded digits model, batch {bs} (8x8 inputs)"}


def resnet_setup(arch: str = "resnet18", bs: int = 16, px: int = 64, seed: int = 0):
    import torch
    import torchvision

    from clado_cli.config import LayersConfig, QuantConfig
    from clado_cli.quant.layers import plan_layers
    from clado_cli.quant.model import QuantModel

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(bs, 3, px, px, generator=g)
    y = torch.randint(0, 10, (bs,), generator=g)
    plan = plan_layers(model, x[:1], LayersConfig())
    model = model.to(DEVICE)
    qm = QuantModel(model, plan, QuantConfig()).to(DEVICE).eval()
    cal = [torch.randn(bs, 3, px, px, generator=g) for _ in range(2)]
    path = Path(os.environ["CLADO_HOME"]) / "bench-cache" / f"{arch}-random{seed}-bs{bs}-{px}px-quant.pt"
    if path.is_file():
        qm.load_quant_state(torch.load(path))
    else:
        qm.calibrate(cal, DEVICE)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(qm.quant_state(), path)
    return {"name": f"{arch} bs{bs}", "model": model, "qm": qm, "x": x.to(DEVICE), "y": y.to(DEVICE),
            "desc": f"torchvision {arch}, random weights (seed {seed}), batch {bs}, {px}x{px} inputs, {DEVICE}"}


# the issue's settings: resnet18 at 64x64, batch 16 on the CPU; resnet34 at 224x224, batch 64 on a GPU
RESNET_DEFAULTS = {"resnet18": (64, 16), "resnet34": (224, 64)}


def model_setup(key: str):
    """embedded64 / embedded16 / resnet18 / resnet34, or ARCH:PX:BS for another size."""
    if key.startswith("embedded"):
        return embedded_setup(int(key.replace("embedded", "") or 64))
    arch, *rest = key.split(":")
    px, bs = RESNET_DEFAULTS.get(arch, (64, 16))
    if rest:
        px = int(rest[0])
    if len(rest) > 1:
        bs = int(rest[1])
    return resnet_setup(arch, bs=bs, px=px)


# -- the seed-style engine ------------------------------------------------------------------

def seed_style(qm, x, y, loss_kind: str = "ce", sample: int = 0, rng_seed: int = 0):
    """A deep copy of the QuantModel per measurement, fake-quant on the fly, a full forward.
    Returns the measured entries {(i,) or (i, j): loss - L0} and seconds per measurement."""
    import torch

    from clado_cli.prep.losses import make_loss

    options = qm.options
    B = len(qm.candidates)
    P = len(options)
    rest = [(i,) for i in range(P)] + [(i, j) for i in range(P) for j in range(i + 1, P) if i // B != j // B]
    if sample and sample - 1 < len(rest):
        rest = random.Random(rng_seed).sample(rest, sample - 1)
    qm.reset()

    def one(opts):
        m = copy.deepcopy(qm)
        m.set_cached(False)
        m.apply([options[k] for k in opts])
        with torch.no_grad():
            out = m(x)
        del m
        return out

    t = time.perf_counter()
    float_logits = one(())
    loss = make_loss(loss_kind, y, float_logits)
    L0 = float(loss(float_logits))
    vals = {}
    for opts in rest:
        vals[opts] = float(loss(one(opts))) - L0
    n = 1 + len(rest)
    return {"values": vals, "L0": L0, "measured": n, "sec_per_measurement": (time.perf_counter() - t) / n}


# -- the benchmarks -------------------------------------------------------------------------

def bench_clado(m, args) -> dict:
    import torch

    from clado_cli.prep.clado import (FastRunner, clado_fast, clado_reference, make_runner,
                                      measurement_count, persistent_bytes)

    qm, x, y = m["qm"], m["x"], m["y"]
    L, B = len(qm.decided), len(qm.candidates)
    count = measurement_count(L, B)
    persistent = persistent_bytes(qm)
    with torch.no_grad():                        # warm up the libraries once
        qm.apply(qm.options[:1])
        qm.set_cached(False)
        qm(x)
        qm.set_cached(True)
        qm.reset()
    t = time.perf_counter()
    runner, _ = make_runner(qm)
    build = time.perf_counter() - t
    res = {"decided_layers": L, "widths": B, "measurements_per_batch": count,
           "runner": type(runner).__name__, "runner_build_s": round(build, 3), "persistent_MB": mb(persistent)}
    # the first batch of a runner verifies its stacked passes once
    fast1, w1, _ = timed(lambda: clado_fast(qm, x, y, runner=runner))
    best = best_of(args.reps if "embedded" in m["key"] else 1,
                   {"reference": lambda: clado_reference(qm, x, y), "fast": lambda: clado_fast(qm, x, y, runner=runner)})
    ref, fast = best["reference"][0], best["fast"][0]
    seed, w_s, _ = timed(lambda: seed_style(qm, x, y, sample=args.seed_measurements))
    for name in ("reference", "fast"):
        res[name] = {"s_per_batch": round(best[name][1], 3), "cpu_s": round(best[name][2], 3)}
    res["fast"].update({"first_batch_s": round(w1, 3),
                        "max_batch": max(runner.stats["stack_per_layer"]) if isinstance(runner, FastRunner) else None,
                        "stacked_layers": int(sum(bool(v) for v in getattr(runner, "stack_ok", [])))})
    extrapolated = seed["measured"] < count
    res["seed_style"] = {"s_per_batch": round(seed["sec_per_measurement"] * count, 3),
                         "extrapolated_from": seed["measured"] if extrapolated else None,
                         "sec_per_measurement": round(seed["sec_per_measurement"], 5)}
    Lt = fast["Ltilde"]
    seed_diff = max([abs(v - Lt[k[0], k[-1]]) for k, v in seed["values"].items()] + [abs(seed["L0"] - float(fast["L0"]))])
    res["max_abs_diff"] = {"fast_vs_reference": float(np.abs(Lt - ref["Ltilde"]).max()),
                           "fast_vs_seed_style": float(seed_diff),
                           "first_batch_vs_later": float(np.abs(fast1["Ltilde"] - Lt).max())}
    tr, tf, ts = res["reference"]["s_per_batch"], res["fast"]["s_per_batch"], res["seed_style"]["s_per_batch"]
    res["speedup"] = {"fast_vs_reference": round(tr / tf, 2), "fast_vs_seed_style": round(ts / tf, 2),
                      "reference_vs_seed_style": round(ts / tr, 2),
                      "fast_vs_reference_cpu": round(res["reference"]["cpu_s"] / res["fast"]["cpu_s"], 2)}
    if not args.no_memory:
        _, pf = tensor_peak(lambda: clado_fast(qm, x, y, runner=runner))
        _, pr = tensor_peak(lambda: clado_reference(qm, x, y))
        _, ps = tensor_peak(lambda: seed_style(qm, x, y, sample=8))
        mem = {"persistent_MB": mb(persistent), "fast_peak_MB": mb(pf), "reference_peak_MB": mb(pr),
               "seed_style_peak_MB": mb(ps),
               "fast_peak_env_MB": mb(runner.stats.get("peak_env_bytes")) if isinstance(runner, FastRunner) else None}
        mem["total_ratio_fast_vs_reference"] = round((persistent + pf) / (persistent + pr), 2)
        mem["peak_ratio_fast_vs_reference"] = round(pf / max(pr, 1), 2)
        res["memory"] = mem
    if args.stacks:
        # the --stack trade-off: the same engine with N perturbations per pass at every layer
        # (same numbers), against auto, timed alternately like the engines above
        runners = {"auto": runner}
        runners.update({str(int(v)): make_runner(qm, max_batch=int(v))[0] for v in args.stacks.split(",")})
        for r in runners.values():
            clado_fast(qm, x, y, runner=r)                   # verification pass
        timings = best_of(args.reps if "embedded" in m["key"] else 1,
                          {n: (lambda r=r: clado_fast(qm, x, y, runner=r)) for n, r in runners.items()})
        sweep = {}
        for n, r in runners.items():
            out, w, _ = timings[n]
            row = {"s_per_batch": round(w, 3), "fast_vs_reference": round(res["reference"]["s_per_batch"] / w, 2),
                   "max_abs_diff_vs_reference": float(np.abs(out["Ltilde"] - ref["Ltilde"]).max()),
                   "stack_per_layer": r.stats.get("stack_per_layer")}
            if not args.no_memory:
                _, pk = tensor_peak(lambda: clado_fast(qm, x, y, runner=r))
                row.update({"peak_MB": mb(pk), "peak_ratio": round(pk / max(pr, 1), 2),
                            "total_ratio": round((persistent + pk) / (persistent + pr), 2)})
            sweep[n] = row
        res["stack_sweep"] = sweep
    return res


def bench_mpqco(m, args) -> dict:
    """fast = what prep runs: ΔW computed once per run (prep_runner) and passed to every batch;
    fast-uncached recomputes ΔW inside each call (what mpqco_fast does when given none)."""
    from clado_cli.prep.mpqco import mpqco_fast, mpqco_reference, weight_deltas

    model, qm, x, y = m["model"], m["qm"], m["x"], m["y"]
    model.requires_grad_(True)
    deltas = weight_deltas(qm)
    mpqco_fast(model, qm, x, y, deltas=deltas)
    mpqco_reference(model, qm, x[:2], y[:2])
    best = best_of(args.reps_small, {"reference": lambda: mpqco_reference(model, qm, x, y),
                                     "fast": lambda: mpqco_fast(model, qm, x, y, deltas=deltas),
                                     "fast_uncached": lambda: mpqco_fast(model, qm, x, y)})
    ref, fast = best["reference"][0]["s"], best["fast"][0]["s"]
    assert np.array_equal(fast, best["fast_uncached"][0]["s"])
    res = {name: {"s_per_batch": round(r[1], 4), "cpu_s": round(r[2], 4)} for name, r in best.items()}
    res["max_rel_diff"] = float((np.abs(fast - ref) / np.maximum(np.abs(ref), 1e-30)).max())
    res["max_abs_diff"] = float(np.abs(fast - ref).max())
    res["speedup"] = {"fast_vs_reference": round(best["reference"][1] / best["fast"][1], 2),
                      "fast_vs_reference_cpu": round(best["reference"][2] / best["fast"][2], 2),
                      "fast_uncached_vs_reference": round(best["reference"][1] / best["fast_uncached"][1], 2)}
    res["deltas_MB"] = mb(sum(d.numel() * d.element_size() for d in deltas.values()))
    if not args.no_memory:
        res["reference"]["peak_MB"] = mb(tensor_peak(lambda: mpqco_reference(model, qm, x, y))[1])
        res["fast"]["peak_MB"] = mb(tensor_peak(lambda: mpqco_fast(model, qm, x, y, deltas=deltas))[1])
        res["fast_uncached"]["peak_MB"] = mb(tensor_peak(lambda: mpqco_fast(model, qm, x, y))[1])
    return res


def bench_hawq(m, probes: int, seed: int = 1, memory: bool = True) -> dict:
    from clado_cli.prep.hawq import hawq_traces

    model, qm, x, y = m["model"], m["qm"], m["x"], m["y"]
    model.requires_grad_(True)
    L = len(qm.decided)
    out, runs = {}, {}
    for est in ("per-layer", "all-layers"):
        r, w, _ = timed(lambda: hawq_traces(model, qm, x, y, "ce", max_iter=probes, tol=1e-12,
                                            seed=seed, estimator=est, return_samples=True))
        out[est] = {"s_per_batch": round(w, 3), "hvp": probes * (L if est == "per-layer" else 1)}
        runs[est] = r
    sp, sa = runs["per-layer"]["samples"], runs["all-layers"]["samples"]
    mean = np.abs(sp.mean(1))
    vp, va = sp.var(1, ddof=1), sa.var(1, ddof=1)
    tp, ta = out["per-layer"]["s_per_batch"], out["all-layers"]["s_per_batch"]
    eq = np.sqrt(va * ta / (vp * tp))        # std of all-layers / std of per-layer, equal seconds
    out["probes"] = probes
    out["speedup_all_vs_per"] = round(tp / ta, 2)
    out["per_probe_rel_std"] = {"per-layer": _summary(np.sqrt(vp) / mean), "all-layers": _summary(np.sqrt(va) / mean)}
    out["std_ratio_all_vs_per_at_equal_time"] = _summary(eq)
    out["layers_where_all_layers_wins_at_equal_time"] = int((eq < 1).sum())
    out["layers"] = L
    out["mean_rel_diff"] = _summary(np.abs(sa.mean(1) - sp.mean(1)) / mean)
    if memory:   # two probes: the peak does not grow with the probe count
        for est in ("per-layer", "all-layers"):
            _, pk = tensor_peak(lambda: hawq_traces(model, qm, x, y, "ce", max_iter=2, tol=1e-12, seed=seed,
                                                    estimator=est))
            out[est]["peak_MB"] = mb(pk)
    return out


def _summary(a) -> dict:
    a = np.asarray(a, dtype=float)
    return {"median": round(float(np.median(a)), 3), "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def hawq_study(m, seeds: int, max_iter: int, tol: float) -> dict:
    """Both estimators with the configured stopping rule, over several probe seeds: the spread
    of the final traces across seeds, their agreement, and the time per batch."""
    from clado_cli.prep.hawq import hawq_traces

    model, qm, x, y = m["model"], m["qm"], m["x"], m["y"]
    model.requires_grad_(True)
    out = {}
    T = {}
    for est in ("per-layer", "all-layers"):
        ts, traces, iters = [], [], []
        for sd in range(seeds):
            r, w, _ = timed(lambda: hawq_traces(model, qm, x, y, "ce", max_iter=max_iter, tol=tol, seed=sd,
                                                     estimator=est))
            ts.append(w)
            traces.append(r["traces"])
            iters.append(r["iterations"])
        T[est] = np.array(traces)
        hvp = np.array(iters).sum(1) if est == "per-layer" else np.array(iters).max(1)
        out[est] = {"s_per_batch": round(float(np.mean(ts)), 3), "hvp_per_batch": round(float(hvp.mean()), 1),
                    "rel_std_across_seeds": _summary(T[est].std(0) / np.abs(T[est].mean(0)))}
    pm, am = T["per-layer"].mean(0), T["all-layers"].mean(0)
    out["rel_diff_of_seed_means"] = _summary(np.abs(am - pm) / np.abs(pm))
    out["settings"] = {"seeds": seeds, "max_iter": max_iter, "tol": tol}
    return out


# -- report ---------------------------------------------------------------------------------

def report_clado(name, r):
    s, ref, fast = r["seed_style"], r["reference"], r["fast"]
    ex = f" (extrapolated from {s['extrapolated_from']} of {r['measurements_per_batch']} measurements)" \
        if s["extrapolated_from"] else ""
    print(f"  clado  {r['decided_layers']} decided layers x {r['widths']} widths, "
          f"{r['measurements_per_batch']} measurements/batch, runner {r['runner']}")
    print(f"    seed-style  {s['s_per_batch']:9.3f} s/batch{ex}")
    print(f"    reference   {ref['s_per_batch']:9.3f} s/batch")
    print(f"    fast        {fast['s_per_batch']:9.3f} s/batch   (first batch {fast['first_batch_s']} s; "
          f"max_batch {fast['max_batch']})")
    sp, d = r["speedup"], r["max_abs_diff"]
    print(f"    fast is {sp['fast_vs_seed_style']}x seed-style, {sp['fast_vs_reference']}x reference "
          f"(cpu time {sp['fast_vs_reference_cpu']}x); max |dLtilde| fast-reference {d['fast_vs_reference']:.2e}, "
          f"fast-seed-style {d['fast_vs_seed_style']:.2e}")
    if "memory" in r:
        mm = r["memory"]
        print(f"    memory: persistent {mm['persistent_MB']} MB; peak beyond it: seed-style {mm['seed_style_peak_MB']} MB, "
              f"reference {mm['reference_peak_MB']} MB, fast {mm['fast_peak_MB']} MB; "
              f"total fast/reference {mm['total_ratio_fast_vs_reference']}x (peak only {mm['peak_ratio_fast_vs_reference']}x)")


def report_stacks(r):
    for n, row in r.get("stack_sweep", {}).items():
        mem = (f", peak {row['peak_MB']} MB ({row['peak_ratio']}x reference's; total {row['total_ratio']}x)"
               if "peak_MB" in row else "")
        print(f"    --stack {n:>4}: {row['s_per_batch']} s/batch, {row['fast_vs_reference']}x reference{mem}")


def report_mpqco(name, r):
    mem = (f"; peak {r['reference']['peak_MB']} / {r['fast']['peak_MB']} MB (+ {r['deltas_MB']} MB of ΔW held "
           f"for the run)" if "peak_MB" in r["reference"] else "")
    print(f"  mpqco  reference {r['reference']['s_per_batch']:.4f} s/batch, fast {r['fast']['s_per_batch']:.4f} s/batch: "
          f"{r['speedup']['fast_vs_reference']}x (cpu {r['speedup']['fast_vs_reference_cpu']}x; ΔW per call "
          f"{r['fast_uncached']['s_per_batch']:.4f} s, {r['speedup']['fast_uncached_vs_reference']}x); "
          f"max rel diff {r['max_rel_diff']:.2e}{mem}")


def report_hawq(name, r):
    p, a = r["per-layer"], r["all-layers"]
    mem = f"; peak {p['peak_MB']} / {a['peak_MB']} MB" if "peak_MB" in p else ""
    print(f"  hawq   {r['probes']} probes/layer: per-layer {p['s_per_batch']} s/batch ({p['hvp']} HVPs), "
          f"all-layers {a['s_per_batch']} s/batch ({a['hvp']} HVPs): {r['speedup_all_vs_per']}x faster{mem}")
    print(f"         per-probe rel std (median over layers) per-layer {r['per_probe_rel_std']['per-layer']['median']}, "
          f"all-layers {r['per_probe_rel_std']['all-layers']['median']}; std ratio all/per at equal time "
          f"median {r['std_ratio_all_vs_per_at_equal_time']['median']} (max {r['std_ratio_all_vs_per_at_equal_time']['max']}); "
          f"all-layers better on {r['layers_where_all_layers_wins_at_equal_time']} of {r['layers']} layers")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="embedded64,embedded16,resnet18",
                    help="comma list of embedded64, embedded16, resnet18 (64px, bs 16), resnet34 (224px, "
                         "bs 64), or ARCH:PX:BS for any torchvision resnet")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the engines run (cuda: timings synchronize, peaks from the CUDA allocator)")
    ap.add_argument("--methods", default="clado,mpqco,hawq")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--seed-measurements", type=int, default=64,
                    help="measurements the seed-style engine runs (0: all); its time is extrapolated")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions on the embedded models (best kept)")
    ap.add_argument("--reps-small", type=int, default=3, help="repetitions of the short MPQCO runs (best kept)")
    ap.add_argument("--no-memory", action="store_true", help="skip the profiled memory runs")
    ap.add_argument("--stacks", default=None,
                    help="also time the CLADO fast engine at these --stack values, e.g. 1,2,3,6,9")
    ap.add_argument("--hawq-probes", default="embedded64=32,embedded16=32,resnet18=8",
                    help="probes per layer for the HAWQ timing, per model")
    ap.add_argument("--hawq-study", action="store_true",
                    help="also run both HAWQ estimators with the default stopping rule over several seeds")
    ap.add_argument("--study-seeds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    os.environ.setdefault("CLADO_HOME", str(Path.home() / ".cache" / "clado"))
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")     # the profiler's own chatter
    os.environ["CLADO_NO_PROGRESS"] = "1"
    import torch

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible here")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    info["load_average_at_start"] = os.getloadavg()
    where = f"GPU {info['gpu']}" if info["gpu"] else "CPU"
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} on {where}, "
          f"{info['torch_threads']} threads; load average {info['load_average_at_start']}")
    methods = args.methods.split(",")
    probes = dict(kv.split("=") for kv in args.hawq_probes.split(","))
    results = {"machine": info, "models": {}}
    t_all = time.time()
    for key in args.models.split(","):
        t0 = time.time()
        m = model_setup(key)
        m["key"] = key
        print(f"\n== {m['desc']} (setup {time.time() - t0:.1f} s) ==")
        r = results["models"][key] = {"desc": m["desc"]}
        if "clado" in methods:
            r["clado"] = bench_clado(m, args)
            report_clado(key, r["clado"])
            report_stacks(r["clado"])
        if "mpqco" in methods:
            r["mpqco"] = bench_mpqco(m, args)
            report_mpqco(key, r["mpqco"])
        if "hawq" in methods:
            r["hawq"] = bench_hawq(m, int(probes.get(key, 16)), memory=not args.no_memory)
            report_hawq(key, r["hawq"])
            if args.hawq_study:
                st = r["hawq_study"] = hawq_study(m, args.study_seeds, 100, 1e-3)
                print(f"  hawq study (max_iter 100, tol 1e-3, {args.study_seeds} seeds): "
                      f"per-layer {st['per-layer']['s_per_batch']} s/batch, rel std across seeds "
                      f"{st['per-layer']['rel_std_across_seeds']['median']} (median); all-layers "
                      f"{st['all-layers']['s_per_batch']} s/batch, {st['all-layers']['rel_std_across_seeds']['median']}; "
                      f"rel diff of means {st['rel_diff_of_seed_means']['median']} (median)")
        print(f"  ({time.time() - t0:.1f} s)")
    results["seconds"] = round(time.time() - t_all, 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"\ntotal {results['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""Evaluate decisions (docs/methods.md, "Evaluate"): build the mixed-precision model, run the evaluation
split, report top-1, top-5, mean loss, sizes and time; uniform baselines and float beside it."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from .console import warn
from .decisions import bops_report, option_keys, sizes_triple
from .errors import InputError


@torch.no_grad()
def evaluate_current(session, limit: Optional[int] = None) -> Dict[str, Any]:
    """Top-1/top-5/mean loss of the QuantModel in its current state on the evaluation split."""
    from .data import eval_batches

    qm = session.qmodel
    d = session.cfg.data
    limit = limit if limit is not None else d.eval_size
    n = top1 = top5 = 0
    loss_sum = 0.0
    correct = []
    t = time.time()
    for x, y in eval_batches(session.data.eval, max(d.bs, 256) if session.device.type == "cpu" else d.bs,
                             limit, d.workers):
        x, y = x.to(session.device), y.to(session.device)
        logits = qm(x)
        if not bool(torch.isfinite(logits).all()):
            raise InputError(f"the model's output is NaN or inf on the evaluation split (images {n}..{n + len(y) - 1}): "
                             f"check the data for NaN pixels and the decision's widths")
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top[:, 0] == y
        correct.append(hit.cpu())
        top1 += int(hit.sum())
        top5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    if n == 0:
        raise InputError("the evaluation split is empty")
    from .stats import binomial_se

    seconds = time.time() - t
    # `correct` (per-image top-1 outcomes, for paired tests) is dropped before results are written
    return {"top1": top1 / n, "top1_se": binomial_se(top1 / n, n), "top5": top5 / n, "loss": loss_sum / n,
            "samples": n, "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1) if seconds > 0 else None, "correct": torch.cat(correct).numpy()}


def check_decision(session, decision: Dict[str, Any], where: str = "decision") -> None:
    fp = decision["cache"]["fingerprint"]
    decided = session.plan.decided_names
    names = list(decision["layers"])
    if set(names) != set(decided):
        unknown = [n for n in names if n not in decided]
        missing = [n for n in decided if n not in names]
        what = f"unknown layer {unknown[0]!r}" if unknown else f"no bits for layer {missing[0]!r}"
        raise InputError(f"{where} does not fit model {session.cfg.model.name}: {what}")
    # solved on sensitivities from a file (no fingerprint): its weight widths on this set-up, whose
    # activation and fixed-layer widths apply
    from_file = fp is None
    if not from_file and fp != session.fingerprint:
        raise InputError(f"{where} was made for another model or config (cache fingerprint {fp}, "
                         f"this config's is {session.fingerprint})")
    cfg = session.cfg
    pairs = cfg.quant.pairs()
    cands = cfg.quant.weight_widths()
    for name, spec in decision["layers"].items():
        if spec["w_bits"] not in cands:
            raise InputError(f"{where}: layer {name} has w_bits {spec['w_bits']}, not one of the candidates {cands}")
        if not from_file and not cfg.quant.act_options and spec["a_bits"] != pairs[0][1]:
            raise InputError(f"{where}: layer {name} has a_bits {spec['a_bits']}, but its input activations are "
                             f"quantized at {pairs[0][1]} bits in this set-up")
        if not from_file and (spec["w_bits"], spec["a_bits"]) not in pairs:
            raise InputError(f"{where}: layer {name} has w_bits/a_bits {spec['w_bits']}/{spec['a_bits']}, not one of "
                             f"the options {[list(p) for p in pairs]}")
    if from_file:
        if cfg.quant.act_options:
            raise InputError(f"{where} was solved on sensitivity files, which carry no activation widths, but this "
                             f"set-up's options differ in activation width (quant.options)")
        return
    fixed = {l.name for l in session.plan.fixed}
    if set(decision["fixed_layers"]) != fixed:
        odd = sorted(set(decision["fixed_layers"]) ^ fixed)
        raise InputError(f"{where}: its fixed layers differ from this model's (first difference: {odd[0]!r})")
    want = (cfg.layers.fixed_weight_bits, cfg.layers.fixed_activation_bits)
    for name, spec in decision["fixed_layers"].items():
        if (spec["w_bits"], spec["a_bits"]) != want:
            raise InputError(f"{where}: fixed layer {name} has w_bits/a_bits {spec['w_bits']}/{spec['a_bits']}, but "
                             f"fixed layers are at {want[0]}/{want[1]} bits in this set-up")


def _w(key) -> int:
    """The weight width of an option key (a width, or a (weight, activation) pair)."""
    return int(key[0]) if isinstance(key, tuple) else int(key)


def bops_for(session, keys: Dict[str, Any]) -> Dict[str, int]:
    """BOPs of the model as evaluated: decided layers at their widths, fixed at theirs, every
    input activation at its width (MACs per sample at the data's input shape)."""
    cfg = session.cfg
    one = cfg.quant.pairs()[0][1]
    acts = {n: int(k[1]) if isinstance(k, tuple) else one for n, k in keys.items()}
    return bops_report(session.layer_macs, {n: _w(k) for n, k in keys.items()}, acts, session.plan.fixed_names,
                       cfg.layers.fixed_weight_bits, cfg.layers.fixed_activation_bits)["bops"]


def decision_label(decision: Dict[str, Any]) -> str:
    """`method @ budget`, with the PSD treatment for CLADO (clip is the release's, the others
    exact) and the refinement: `clado/clip @ avg:3`, `clado/exact+refine3 @ avg:3`."""
    psd = decision.get("psd")
    method = f"{decision['method']}/{psd}" if psd else decision["method"]
    k = (decision.get("refine") or {}).get("k", 1)
    return f"{method}{f'+refine{k}' if k > 1 else ''} @ {decision['budget']['given']}"


def sizes_for(session, bits_by_layer: Dict[str, int]) -> Dict[str, float]:
    plan, cfg = session.plan, session.cfg
    decided = sum(l.numel * _w(bits_by_layer[l.name]) / 8 for l in plan.decided)
    fixed = sum(l.numel * cfg.layers.fixed_weight_bits / 8 for l in plan.fixed)
    return sizes_triple(decided, fixed)


def _bits_key(bits: Dict[str, int]):
    return tuple(sorted(bits.items()))


def _evaluate_bits(session, bits: Dict[str, int]) -> Dict[str, Any]:
    key = ("decision", session.cfg.data.eval_size, _bits_key(bits))
    memo = session.eval_memo   # the same bits give the same numbers: evaluation is deterministic
    if key in memo:
        return {**memo[key], "reused": True}
    session.qmodel.set_decision(bits)
    try:
        metrics = evaluate_current(session)
    finally:
        session.qmodel.reset()
    memo[key] = dict(metrics)
    return metrics


def evaluate_decision(session, decision: Dict[str, Any], where: str = "decision") -> Dict[str, Any]:
    """Top-1/top-5/loss of a decision; a decision with the same bits as one evaluated before in
    this session (methods often agree at a budget) reuses its numbers ("reused": true)."""
    check_decision(session, decision, where)
    bits = option_keys(decision, session.cfg.quant.act_options)
    metrics = _evaluate_bits(session, bits)
    warnings = list(decision.get("warnings", []))
    fl = session.float_metrics
    checked = session.data.labeled and not str(session.data.spec).startswith("synthetic")
    if fl is not None and checked and metrics["top1"] > fl["top1"] + _noise(fl["top1"], fl["samples"]):
        w = (f"{decision['method']} @ {decision['budget']['given']}: top-1 {100 * metrics['top1']:.2f}% beats the "
             f"float model's {100 * fl['top1']:.2f}% on {fl['samples']} images: check the preprocessing "
             f"(data.transform) and the labels")
        warn(w)
        warnings.append(w)
    return {"kind": "decision", "method": decision["method"], "budget": decision["budget"],
            "label": decision_label(decision),
            **metrics, "sizes": sizes_for(session, bits), "bops": bops_for(session, bits),
            "costs": {"decided": dict((decision.get("costs") or {}).get("decided") or {})},
            "constraints": decision.get("constraints") or [],
            "predicted_loss_increase": decision.get("predicted_loss_increase"),
            "measured_loss_increase": (decision.get("measured") or {}).get("sensitivity", {}).get("loss_increase"),
            "held_out_loss_increase": ((decision.get("measured") or {}).get("held_out") or {}).get("loss_increase"),
            "solver": {k: decision["solver"].get(k) for k in ("solver", "status", "optimal", "gap")},
            "warnings": warnings,
            "provenance": {"fingerprint": decision["cache"]["fingerprint"], "batches": decision["cache"]["batches"],
                           "source": where}}


def evaluate_uniform(session, widths: Iterable[int], include_float: bool = True) -> List[Dict[str, Any]]:
    qm = session.qmodel
    rows = []
    if include_float:
        qm.reset()
        m = evaluate_current(session)
        session.float_metrics = dict(m)
        rows.append({"kind": "float", "label": "float", **m,
                     "sizes": sizes_triple(sum(l.numel * 4 for l in session.plan.decided),
                                           sum(l.numel * 4 for l in session.plan.fixed))})
    q = session.cfg.quant
    for b in widths:
        if b not in q.weight_widths():
            raise InputError(f"uniform {b}: not one of the candidate widths {q.weight_widths()}",
                             params=("uniform",))
        # with activation options: weight width b at the widest activation width paired with it
        key = max(p for p in q.pairs() if p[0] == b) if q.act_options else b
        label = f"uniform {b}-bit" if not q.act_options else f"uniform w{key[0]}a{key[1]}"
        keys = {n: key for n in session.plan.decided_names}
        m = _evaluate_bits(session, keys)
        rows.append({"kind": "uniform", "bits": b, "label": label, **m,
                     "sizes": sizes_for(session, keys), "bops": bops_for(session, keys)})
    if include_float:
        warnings = sanity_warnings(session, rows)
        for w in warnings:
            warn(w)
        rows[0]["warnings"] = warnings
    return rows


def _noise(p: float, n: int) -> float:
    """Two standard errors of an accuracy p measured on n images, at least one point."""
    return max(0.01, 2.0 * math.sqrt(max(p * (1 - p), 1.0 / n) / max(n, 1)))


def sanity_warnings(session, rows: List[Dict[str, Any]]) -> List[str]:
    """On labeled data (not pseudo-labels, where float is right by definition): the float
    model near chance, or a quantized baseline clearly above it, is the signature of wrong
    preprocessing (docs: README "Data"). Each warning carries the numbers."""
    data = session.data
    if not data.labeled or not rows or rows[0].get("kind") != "float":
        return []
    if str(getattr(data, "spec", "")).startswith("synthetic"):
        return []  # random labels: chance is all there is to get
    fl = rows[0]
    n, top1 = fl["samples"], fl["top1"]
    out = []
    classes = data.num_classes or 0
    if classes >= 2:
        chance = 1.0 / classes
        if top1 <= chance + max(0.5 * chance, _noise(chance, n)):
            out.append(f"the float model's top-1 is {100 * top1:.2f}% on {n} images, near chance "
                       f"({100 * chance:.2f}% for {classes} classes; loss {fl['loss']:.3f}): the preprocessing "
                       f"may not be the model's (data.transform: normalize, mean/std, input size, channels)")
    for r in rows[1:]:
        if r["top1"] > top1 + _noise(top1, n):
            out.append(f"{r['label']} top-1 {100 * r['top1']:.2f}% beats the float model's {100 * top1:.2f}% on "
                       f"{n} images (loss {r['loss']:.3f} vs {fl['loss']:.3f}): the signature of wrong "
                       f"preprocessing (data.transform) or wrong labels")
    return out

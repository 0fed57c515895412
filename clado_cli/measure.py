"""Predicted against measured: the loss increase a decision actually causes (docs/methods.md,
"Predicted and measured").

The programs rest on a model of the loss: CLADO's predicted increase xᵀGx/2 adds single and
pairwise terms measured one or two options at a time. Here the whole decision is applied at
once (every decided layer at its chosen option, fixed layers float, as in the sensitivities)
and L(S) − L0 is measured on the sensitivity batches and on held-out training batches (the
batches right after the sensitivity set, which no sensitivity or default calibration saw).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

# a prediction off by more than this factor (either way) is flagged
OFF_FACTOR = 2.0
# measured and predicted increases below this (nats) are too small to compare as a ratio
COMPARABLE = 1e-3


@torch.no_grad()
def loss_increases(session, decisions_bits: Sequence[Mapping[str, int]], ks: Sequence[int]) -> List[Dict[str, Any]]:
    """For each decision (bits by decided layer): the sample-weighted mean of L(decision) −
    L(float) over the batches ks. Each batch is loaded, and its float loss computed, once for
    all the decisions."""
    from .prep.losses import make_loss

    qm = session.qmodel
    kind = session.cfg.prep.loss
    totals = [0.0] * len(decisions_bits)
    n = 0
    try:
        for k in ks:
            x, y = session.sensitivity_batch(k)
            qm.reset()
            float_logits = qm(x)
            loss = make_loss(kind, y, float_logits)
            l0 = float(loss(float_logits))
            for i, bits in enumerate(decisions_bits):
                qm.apply(bits.items())
                totals[i] += (float(loss(qm(x))) - l0) * len(y)
            n += len(y)
    finally:
        qm.reset()
    return [{"loss_increase": t / n if n else None, "batches": list(ks), "samples": n} for t in totals]


def held_out_batches(session, ks: Sequence[int], count: Optional[int] = None) -> List[int]:
    """Up to `count` (default: as many as ks) training batches after the sensitivity set, and
    before the calibration images (calibration_from: tail), so that neither saw them."""
    from .data.batches import disjoint_batches

    d = session.cfg.data
    available = disjoint_batches(len(session.data.train), d.bs, d.calibration_size, d.calibration_from)
    start = max(ks) + 1 if ks else 0
    count = len(ks) if count is None else count
    return list(range(start, min(start + count, available)))


def saturated_singles(session, method_name: str, ks: Sequence[int]) -> Optional[str]:
    """For methods on CLADO's cache: a warning when single-option loss increases exceed ln(C),
    the loss of guessing uniformly among C classes: the quadratic model is then out of its range."""
    from .methods import get_method, load_sensitivities

    method = get_method(method_name)
    if method.source != "clado" or not session.data.num_classes:
        return None
    sens = load_sensitivities(session.cache, method, ks)
    limit = math.log(session.data.num_classes)
    over = int((sens.singles > limit).sum())
    if not over:
        return None
    return (f"{over} of {len(sens.singles)} single-option loss increases exceed ln({session.data.num_classes}) = "
            f"{limit:.2f} nats (largest {float(sens.singles.max()):.2f}): those options saturate the loss, so "
            f"pairwise terms are no longer small corrections and the prediction may be far off")


def measure_decisions(session, decisions: Sequence[Mapping[str, Any]],
                      held_out: Optional[int] = None) -> List[Dict[str, Any]]:
    """Each decision's measured loss increase on its sensitivity batches and on held-out
    batches, its prediction beside them, their ratio, and warnings with the numbers. Decisions
    on the same batches share every batch's float pass, and each cache's singles are read once."""
    from .decisions import option_keys
    from .methods import get_method

    out: List[Optional[Dict[str, Any]]] = [None] * len(decisions)
    groups: Dict[tuple, List[int]] = {}
    for i, d in enumerate(decisions):
        groups.setdefault(tuple(d["cache"]["batches"]), []).append(i)
    for ks, members in groups.items():
        bits = [option_keys(decisions[i], session.qmodel.act_options) for i in members]
        on_sens = loss_increases(session, bits, ks)
        val_ks = held_out_batches(session, ks, held_out)
        on_val = loss_increases(session, bits, val_ks) if val_ks else [None] * len(members)
        saturation: Dict[str, Optional[str]] = {}
        for j, i in enumerate(members):
            d = decisions[i]
            source = get_method(d["method"]).source
            if source not in saturation:
                saturation[source] = saturated_singles(session, d["method"], ks)
            out[i] = _judged(d, on_sens[j], on_val[j], saturation[source])
    return out


def measure_decision(session, decision: Mapping[str, Any], held_out: Optional[int] = None) -> Dict[str, Any]:
    """`measure_decisions` for one decision."""
    return measure_decisions(session, [decision], held_out)[0]


def _judged(decision: Mapping[str, Any], on_sens: Dict[str, Any], on_val: Optional[Dict[str, Any]],
            saturation: Optional[str]) -> Dict[str, Any]:
    from .methods import get_method

    predicted = float(decision["predicted_loss_increase"])
    loss_units = get_method(decision["method"]).source == "clado"   # clado, naive: in nats of loss
    measured = on_sens["loss_increase"]
    ratio = predicted / measured if loss_units and measured and abs(measured) >= COMPARABLE else None
    warnings = []
    if loss_units and predicted < 0:
        warnings.append(f"the predicted loss increase is negative ({predicted:.4g}) while the measured one is "
                        f"{measured:.4g}: the pairwise model is extrapolating")
    if ratio is not None and not (1 / OFF_FACTOR <= ratio <= OFF_FACTOR) and \
            max(abs(predicted), abs(measured)) >= COMPARABLE:
        warnings.append(f"predicted loss increase {predicted:.4g} vs measured {measured:.4g} on the sensitivity "
                        f"set (ratio {ratio:.3g}, outside {1 / OFF_FACTOR:g}..{OFF_FACTOR:g})")
    if saturation:
        warnings.append(saturation)
    return {"predicted": predicted, "predicted_in_loss_units": loss_units, "sensitivity": on_sens,
            "held_out": on_val, "ratio": ratio, "warnings": warnings}

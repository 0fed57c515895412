"""Predicted against measured loss increase of a decision (clado_cli/measure.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest


def test_two_decided_layers_make_the_pairwise_model_exact(small_cfg):
    """With two decided layers, xᵀGx/2 = L(i,j) − L0 exactly (docs/methods.md, "CLADO"), so every
    decision's measured increase must equal its prediction: a check of both sides."""
    from clado_cli.decide import decide
    from clado_cli.measure import measure_decision
    from clado_cli.optimize import resolve_budget_spec
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    s = Session(small_cfg(**{"layers.include": ["layer2.0.conv1", "layer3.0.conv2"]}))
    assert s.plan.decided_names == ["layer2.0.conv1", "layer3.0.conv2"]
    run_prep(s, "clado", 0, 1)
    numel = sum(l.numel for l in s.plan.decided)
    ds = decide(s.cache, ["clado"], [resolve_budget_spec(b, numel) for b in ("avg:2", "avg:3", "avg:8")],
                psd="shift")
    for d in ds:
        m = measure_decision(s, d, held_out=1)
        assert m["sensitivity"]["loss_increase"] == pytest.approx(d["predicted_loss_increase"], rel=1e-9, abs=1e-9)
        assert m["sensitivity"]["batches"] == [0, 1] and m["sensitivity"]["samples"] == 32
        assert m["held_out"]["batches"] == [2] and math.isfinite(m["held_out"]["loss_increase"])
        if abs(m["sensitivity"]["loss_increase"]) >= 1e-3:
            assert m["ratio"] == pytest.approx(1.0, rel=1e-6)
    # several decisions measured together (one float pass per batch) give each one's numbers
    from clado_cli.measure import measure_decisions

    together = measure_decisions(s, ds, held_out=1)
    assert together == [measure_decision(s, d, held_out=1) for d in ds]
    # the all-2-bit decision costs more than the all-8-bit one, on both splits
    lo, hi = measure_decision(s, ds[0], 1), measure_decision(s, ds[2], 1)
    assert lo["sensitivity"]["loss_increase"] > hi["sensitivity"]["loss_increase"]
    assert lo["held_out"]["loss_increase"] > hi["held_out"]["loss_increase"]


def test_warnings_name_the_numbers(shared_session):
    from clado_cli.decide import decide
    from clado_cli.measure import measure_decision
    from clado_cli.optimize import resolve_budget_spec
    from clado_cli.prep import run_prep

    s = shared_session
    run_prep(s, "clado", 0, 1)
    numel = sum(l.numel for l in s.plan.decided)
    (d,) = decide(s.cache, ["clado"], [resolve_budget_spec("avg:2", numel)], psd="shift")
    m = measure_decision(s, dict(d, predicted_loss_increase=-3.0), held_out=1)
    assert any("predicted loss increase is negative (-3)" in w for w in m["warnings"])
    m = measure_decision(s, dict(d, predicted_loss_increase=d["predicted_loss_increase"] * 10), held_out=1)
    assert any("outside 0.5..2" in w for w in m["warnings"])
    # all-2-bit on digits: every single option of 2 bits costs more than ln(10)?  Only report what is
    # there: the warning, when present, names the count and the limit
    sat = [w for w in measure_decision(s, d, held_out=1)["warnings"] if "exceed ln(10)" in w]
    singles = np.diag(s.cache.combine(__import__("clado_cli.methods", fromlist=["kind_of"]).kind_of("clado"),
                                      [0, 1])[0]["Ltilde"])
    assert bool(sat) == bool((singles > math.log(10)).any())

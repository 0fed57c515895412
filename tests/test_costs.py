"""BOPs: per-layer MACs from one forward pass, checked against torch's own FLOP counter, and the
costs every decision and evaluation records."""
from __future__ import annotations

import pytest
import torch


def test_resnet18_macs_equal_an_independent_count():
    """torchvision resnet18 at 224x224: ~1.8 G multiply-accumulates; every conv and linear MAC
    equals half of the FLOPs torch.utils.flop_counter counts for its convolution/matmul."""
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    from clado_cli.quant.costs import layer_macs
    from clado_cli.quant.layers import QUANTIZABLE

    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.zeros(1, 3, 224, 224)
    names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    macs = layer_macs(model, x, names)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    counted = fc.get_flop_counts()["Global"]
    flops = sum(v for op, v in counted.items() if "convolution" in str(op) or "addmm" in str(op) or "mm" in str(op))
    assert sum(macs.values()) * 2 == flops
    assert sum(macs.values()) == pytest.approx(1.8e9, rel=0.02)
    assert macs["conv1"] == 112 * 112 * 64 * 3 * 7 * 7 and macs["fc"] == 512 * 1000


def test_depthwise_and_repeated_calls_count_every_multiply():
    import torch.nn as nn

    from clado_cli.quant.costs import layer_macs

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.fc = nn.Linear(4 * 5 * 5, 3)

        def forward(self, x):
            return self.fc(self.dw(self.dw(x)).flatten(1))

    m = layer_macs(Twice(), torch.zeros(2, 4, 5, 5), ["dw", "fc"])
    assert m == {"dw": 2 * 4 * 5 * 5 * 9, "fc": 100 * 3}


def test_decisions_and_evaluations_record_bops(small_cfg):
    from clado_cli.decide import decide
    from clado_cli.evaluate import evaluate_decision
    from clado_cli.optimize import resolve_budget_spec
    from clado_cli.prep import run_prep
    from clado_cli.session import Session

    s = Session(small_cfg())
    run_prep(s, "mpqco", 0, 0)
    macs = s.cache.load_layer_costs()
    assert macs == s.layer_macs and set(macs) == {l.name for l in s.plan.decided + s.plan.fixed}
    numel = sum(l.numel for l in s.plan.decided)
    (d,) = decide(s.cache, ["mpqco"], [resolve_budget_spec("avg:4", numel)])
    want = sum(macs[n] * spec["w_bits"] * 8 for n, spec in d["layers"].items())
    assert d["costs"]["bops"]["decided"] == want
    assert d["costs"]["bops"]["fixed"] == sum(macs[l.name] * 8 * 8 for l in s.plan.fixed)
    row = evaluate_decision(s, d)
    assert row["bops"] == d["costs"]["bops"]

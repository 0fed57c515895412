"""The MQBench-backed quantizers: options, decisions, calibration state."""
import copy

import pytest
import torch
import torch.nn as nn

from clado_cli.config import LayersConfig, QuantConfig
from clado_cli.data import eval_batches
from clado_cli.quant.layers import plan_layers
from clado_cli.quant.model import QuantModel, make_qconfig


def _accuracy(session):
    qm = session.qmodel
    c = n = 0
    with torch.no_grad():
        for x, y in eval_batches(session.data.eval, 512):
            c += int((qm(x).argmax(1) == y).sum())
            n += len(y)
    return c / n


def test_uniform_8bit_close_to_float_and_2bit_drops(shared_session):
    qm = shared_session.qmodel
    qm.reset()
    flt = _accuracy(shared_session)
    qm.set_uniform(8)
    u8 = _accuracy(shared_session)
    qm.set_uniform(2)
    u2 = _accuracy(shared_session)
    qm.reset()
    assert abs(u8 - flt) <= 0.01
    assert u2 < flt - 0.2


def test_applying_one_option_changes_exactly_that_layer(shared_session):
    qm = shared_session.qmodel
    x, _ = shared_session.sensitivity_batch(0)
    target = qm.decided[3]
    seen = {}

    def record(name):
        def hook(mod, inp, out):
            seen[name] = (inp[0].detach().clone(), mod.weight_for(mod.w_bits).detach().clone())
        return hook

    hooks = [q.register_forward_hook(record(q.name)) for q in qm.qlayers.values()]
    try:
        qm.reset()
        with torch.no_grad():
            qm(x)
        float_seen = dict(seen)
        qm.apply([(target.name, 2)])
        with torch.no_grad():
            qm(x)
    finally:
        for h in hooks:
            h.remove()
        qm.reset()
    for q in qm.qlayers.values():
        w0, w1 = float_seen[q.name][1], seen[q.name][1]
        if q is target:
            assert not torch.equal(w0, w1)
            assert torch.equal(w1, q.quantized_weight(2))
            assert len(torch.unique(w1)) <= 4  # 2-bit symmetric: at most 4 levels
        else:
            assert torch.equal(w0, w1)
    # the input the target layer computes with is fake-quantized (at most 256 levels)
    assert target.a_on is False  # reset restored float
    inp = float_seen[target.name][0]
    assert torch.equal(target.a_fq(inp), target.a_fq(target.a_fq(inp)))
    assert len(torch.unique(target.a_fq(inp))) <= 256


def test_reset_returns_to_float_exactly(shared_session):
    qm = shared_session.qmodel
    x, _ = shared_session.sensitivity_batch(0)
    with torch.no_grad():
        qm.reset()
        a = qm(x)
        qm.set_uniform(2)
        qm.reset()
        b = qm(x)
        ref = shared_session.float_model(x)
    assert torch.equal(a, b) and torch.equal(a, ref)


def test_cached_and_on_the_fly_weights_agree(shared_session):
    qm = shared_session.qmodel
    x, _ = shared_session.sensitivity_batch(1)
    with torch.no_grad():
        qm.set_uniform(4)
        qm.set_cached(True)
        a = qm(x)
        qm.set_cached(False)
        b = qm(x)
    qm.set_cached(True)
    qm.reset()
    assert torch.equal(a, b)


def test_quant_state_round_trip(shared_session):
    qm = shared_session.qmodel
    state = qm.quant_state()
    other = QuantModel(shared_session.float_model, shared_session.plan, shared_session.cfg.quant)
    other.load_quant_state(state)
    for name, q in qm.qlayers.items():
        o = other.qlayers[name]
        assert torch.equal(q.a_fq.scale, o.a_fq.scale)
        for b in q.bit_options:
            assert torch.equal(q.quantized_weight(b), o.quantized_weight(b))


def test_weight_quantizer_matches_mqbench_prepare_by_platform():
    """Our per-option weight quantizer gives what MQBench's own prepared model gives."""
    from mqbench.prepare_by_platform import BackendType, prepare_by_platform
    from mqbench.utils.state import enable_calibration

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5)).eval()
    quant = QuantConfig()
    extra = {"extra_qconfig_dict": {
        "w_observer": "MSEObserver", "a_observer": "EMAMSEObserver",
        "w_fakequantize": "FixedFakeQuantize", "a_fakequantize": "FixedFakeQuantize",
        "w_qscheme": {"bit": 4, "symmetry": True, "per_channel": False, "pot_scale": False},
        "a_qscheme": {"bit": 8, "symmetry": False, "per_channel": False, "pot_scale": False}}}
    prepared = prepare_by_platform(copy.deepcopy(model), BackendType.Academic, extra)
    enable_calibration(prepared)
    prepared(torch.randn(2, 3, 8, 8))
    mq_w = prepared.get_submodule("2").weight_fake_quant
    mq_w.disable_observer()
    mq_w.enable_fake_quant()
    expected = mq_w(prepared.get_submodule("2").weight.detach())

    plan = plan_layers(model, torch.zeros(1, 3, 8, 8), LayersConfig())
    qm = QuantModel(model, plan, QuantConfig(weight_candidates=[2, 4, 8]))
    qm.calibrate([torch.randn(2, 3, 8, 8)])
    assert torch.equal(qm.qlayers["2"].quantized_weight(4), expected)


def test_layers_from_the_wild_are_listed_never_dropped():
    class MyConv(nn.Conv2d):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = MyConv(8, 8, 3, padding=1, groups=8)
            self.a = nn.Conv2d(8, 4, 1)
            self.b = nn.Conv2d(8, 4, 3, padding=1)
            self.unused = nn.Conv2d(8, 8, 1)
            self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.dw(self.stem(x)))
            x = torch.cat([self.a(x), self.b(x)], 1)
            x = self.up(x)
            return self.head(x.mean((2, 3)))

    net = Net().eval()
    plan = plan_layers(net, torch.zeros(1, 3, 13, 11), LayersConfig())
    assert plan.decided_names == ["dw", "a", "b"]
    assert [(l.name, l.reason) for l in plan.fixed] == [("stem", "first layer"), ("head", "last layer (classifier)")]
    skipped = {l.name: l.reason for l in plan.skipped}
    assert skipped["unused"] == "never called in a forward pass"
    assert "ConvTranspose2d is not a quantizable type" in skipped["up"]
    assert plan.decided[0].groups == 8 and plan.decided[0].kind == "MyConv"
    qm = QuantModel(net, plan, QuantConfig())
    qm.calibrate([torch.randn(4, 3, 13, 11)])
    qm.set_uniform(2)
    with torch.no_grad():
        assert qm(torch.randn(2, 3, 13, 11)).shape == (2, 3)

"""The activation fake-quant fast path gives MQBench's FixedFakeQuantize output bit for bit
(evaluation and the CLADO fast engine must agree to the last bit), and defers to it where
gradients are wanted."""
from __future__ import annotations

import pytest
import torch

from clado_cli.config import QuantConfig, QuantizerConfig
from clado_cli.quant.model import fake_quant_activation, make_qconfig


@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, False), (2, False), (8, True), (3, True)])
def test_fast_path_equals_fixed_fake_quantize(bits, symmetric):
    q = QuantConfig()
    act = QuantizerConfig(observer="MinMaxObserver", symmetric=symmetric)
    fq = make_qconfig(q.weight, 8, act, bits).activation()
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 8, 16, 16, generator=g) * 3 + 0.5
    fq.enable_observer(); fq.disable_fake_quant(); fq(x); fq.disable_observer(); fq.enable_fake_quant()
    s = float(fq.scale)
    edges = torch.tensor([0.0, 1e30, -1e30, 0.5 * s, -1.5 * s, 2.5 * s, 1e-30, -0.0])
    y = torch.cat([x.flatten(), edges, torch.linspace(-5, 5, 10001)])
    with torch.no_grad():
        assert torch.equal(fake_quant_activation(fq, y), fq(y))
    z = y.clone().requires_grad_(True)  # gradients wanted: MQBench's own op (straight-through)
    fake_quant_activation(fq, z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0

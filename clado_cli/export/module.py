"""A plain PyTorch module computing clado's fake-quant model for one decision: the float model
with each quantized layer's weight replaced by its dequantized value and its input
fake-quantized, exactly as `QuantModel.set_decision` runs it.

The same module is what the ONNX exporter traces: with `exporting` on, each quantized input and
weight passes through a marker op (`clado::QuantizedInput`, `clado::QuantizedWeight`) that the
ONNX writer replaces with QuantizeLinear/DequantizeLinear.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Mapping, Optional

import torch
import torch.nn as nn

from .quantizers import QuantizerSpec

MARKER_DOMAIN = "clado"


def _marker(op: str):
    """An identity whose ONNX form is the node `clado::<op>(index)`, marking a tensor to quantize."""

    class Marker(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, idx):
            return t.clone()

        @staticmethod
        def symbolic(g, t, idx):
            out = g.op(f"{MARKER_DOMAIN}::{op}", t, index_i=idx)
            out.setType(t.type())
            return out

    Marker.__name__ = f"{op}Marker"
    return Marker


_InputMarker = _marker("QuantizedInput")
_WeightMarker = _marker("QuantizedWeight")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


class QuantizedLayer(nn.Module):
    """One quantized layer (the original at `.layer`, its weight already dequantized): the input
    is fake-quantized per tensor with `torch.fake_quantize_per_tensor_affine`, the call MQBench's
    FixedFakeQuantize makes, with the same scale, zero point and range."""

    def __init__(self, layer: nn.Module, input_spec: QuantizerSpec, index: int):
        super().__init__()
        self.layer = layer
        self.name = input_spec.layer
        self.index = index
        self.scale = float(input_spec.scale[0])
        self.zero_point = int(input_spec.zero_point[0])
        self.qmin, self.qmax = int(input_spec.qmin), int(input_spec.qmax)
        self.exporting = False

    def forward(self, x):
        if self.exporting:
            x = _InputMarker.apply(x, self.index)
            w = _WeightMarker.apply(self.layer.weight, self.index)
            orig = self.layer._parameters["weight"]
            self.layer._parameters["weight"] = w   # the layer's own forward sees the marked weight
            try:
                return self.layer(x)
            finally:
                self.layer._parameters["weight"] = orig
        x = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)
        return self.layer(x)

    def extra_repr(self):
        return f"name={self.name}, scale={self.scale}, zero_point={self.zero_point}, range=[{self.qmin}, {self.qmax}]"


def quantized_layers(model: nn.Module) -> Dict[str, QuantizedLayer]:
    return {m.name: m for m in model.modules() if isinstance(m, QuantizedLayer)}


def set_exporting(model: nn.Module, on: bool) -> None:
    for m in quantized_layers(model).values():
        m.exporting = on


@torch.no_grad()
def build_quantized_module(float_model: nn.Module, specs: Iterable[QuantizerSpec],
                           weights: Optional[Mapping[str, torch.Tensor]] = None) -> nn.Module:
    """A deep copy of `float_model` with every layer that has an input spec wrapped in a
    QuantizedLayer. `weights`: dequantized weight per layer name to copy in (None: the model's
    weights already are)."""
    model = copy.deepcopy(float_model).eval()
    inputs = [sp for sp in specs if sp.tensor == "input"]
    for i, sp in enumerate(inputs):
        layer = model.get_submodule(sp.layer)
        if weights is not None:
            layer.weight.copy_(weights[sp.layer].to(layer.weight.device, layer.weight.dtype))
        _set_submodule(model, sp.layer, QuantizedLayer(layer, sp, i))
    return model

"""Quantization backend on MQBench (Academic backend, FixedFakeQuantize)."""
from .layers import LayerInfo, LayerPlan, plan_layers
from .model import QLayer, QuantModel

__all__ = ["LayerInfo", "LayerPlan", "plan_layers", "QLayer", "QuantModel"]

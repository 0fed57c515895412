"""Every quantizer of a decision, read from clado's calibrated MQBench fake-quant modules.

A `QuantizerSpec` is one fake-quantizer as clado applies it (docs/methods.md, "Quantizers"):
`Q(v) = s * (clamp(round(v / s) + z, qmin, qmax) - z)`, per tensor or per output channel. The
weight of each decided layer is quantized at the decision's width, the weight of each fixed
layer at the fixed width, and the input of each of them at its activation width. Everything
export writes (ONNX, encodings, weights) is derived from these specs and nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import InputError

# ONNX integer element types by range, narrowest first: (name, lo, hi)
INT_TYPES: Tuple[Tuple[str, int, int], ...] = (
    ("uint4", 0, 15), ("int4", -8, 7), ("uint8", 0, 255), ("int8", -128, 127),
    ("uint16", 0, 65535), ("int16", -32768, 32767),
)
TYPE_BITS = {"uint4": 4, "int4": 4, "uint8": 8, "int8": 8, "uint16": 16, "int16": 16}


@dataclass
class QuantizerSpec:
    layer: str                 # module name, e.g. layer1.0.conv1
    tensor: str                # "weight" or "input"
    role: str                  # "decided" or "fixed"
    bits: int
    symmetric: bool
    qmin: int
    qmax: int
    scale: List[float]         # one per channel (per-channel) or one (per-tensor)
    zero_point: List[int]
    axis: Optional[int] = None  # the channel axis of a per-channel quantizer, else None
    shape: Optional[List[int]] = None  # the quantized tensor's shape (weights)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def storage_type(self) -> str:
        """The narrowest ONNX integer type that holds [qmin, qmax] (and so the zero points)."""
        for name, lo, hi in INT_TYPES:
            if lo <= self.qmin and self.qmax <= hi:
                return name
        raise InputError(f"{self.layer} {self.tensor}: integer range [{self.qmin}, {self.qmax}] fits no ONNX "
                         f"integer type up to 16 bits")

    @property
    def exact_type(self) -> bool:
        """Whether the storage type's own range is [qmin, qmax] (so saturation alone clamps)."""
        for name, lo, hi in INT_TYPES:
            if name == self.storage_type:
                return (lo, hi) == (self.qmin, self.qmax)
        return False

    def bounds(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The dequantized range [(qmin - z) s, (qmax - z) s] in float32, per channel."""
        s = torch.tensor(self.scale, dtype=torch.float32)
        z = torch.tensor(self.zero_point, dtype=torch.int64)
        return (self.qmin - z).float() * s, (self.qmax - z).float() * s

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["per_channel"] = self.per_channel
        d["dtype"] = self.storage_type
        lo, hi = self.bounds()
        d["min"], d["max"] = [float(v) for v in lo], [float(v) for v in hi]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantizerSpec":
        return cls(layer=d["layer"], tensor=d["tensor"], role=d["role"], bits=int(d["bits"]),
                   symmetric=bool(d["symmetric"]), qmin=int(d["qmin"]), qmax=int(d["qmax"]),
                   scale=[float(v) for v in d["scale"]], zero_point=[int(v) for v in d["zero_point"]],
                   axis=d.get("axis"), shape=d.get("shape"))


def spec_of(fq, layer: str, tensor: str, role: str, shape=None) -> QuantizerSpec:
    """The spec of one calibrated MQBench fake-quantizer."""
    scale = fq.scale.detach().float().cpu().reshape(-1)
    zp = fq.zero_point.detach().cpu().reshape(-1).to(torch.int64)
    qmin, qmax = int(fq.quant_min), int(fq.quant_max)
    per_channel = bool(fq.is_per_channel)
    if not per_channel and scale.numel() != 1:
        raise InputError(f"{layer} {tensor}: a per-tensor quantizer with {scale.numel()} scales")
    if bool((zp < qmin).any() or (zp > qmax).any()):
        raise InputError(f"{layer} {tensor}: zero point outside [{qmin}, {qmax}]: the quantizer is not calibrated")
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise InputError(f"{layer} {tensor}: scale {scale.tolist()} is not positive and finite")
    return QuantizerSpec(layer=layer, tensor=tensor, role=role, bits=int(fq.bitwidth),
                         symmetric=bool(fq.is_symmetric_quant), qmin=qmin, qmax=qmax,
                         scale=[float(v) for v in scale], zero_point=[int(v) for v in zp],
                         axis=int(fq.ch_axis) if per_channel else None,
                         shape=list(shape) if shape is not None else None)


def weight_bits(qmodel, decision: Mapping[str, Any]) -> Dict[str, int]:
    """Weight width per quantized layer: decided layers from the decision, fixed layers at the
    model's fixed width. Layers must be exactly the model's decided layers."""
    decided = [q.name for q in qmodel.decided]
    given = decision["layers"]
    if set(given) != set(decided):
        unknown = [n for n in given if n not in decided]
        missing = [n for n in decided if n not in given]
        what = f"unknown layer {unknown[0]!r}" if unknown else f"no bits for layer {missing[0]!r}"
        raise InputError(f"decision does not fit the model: {what}")
    bits = {n: int(given[n]["w_bits"]) for n in decided}
    for q in qmodel.fixed:
        bits[q.name] = int(qmodel.fixed_w_bits)
    for q in qmodel.decided:
        if bits[q.name] not in q.bit_options:
            raise InputError(f"decision: layer {q.name} has w_bits {bits[q.name]}, not one of the "
                             f"candidates {q.bit_options}")
    return bits


def ordered_layers(qmodel) -> List:
    """Decided and fixed QLayers in the model's module order."""
    rank = {name: i for i, (name, _) in enumerate(qmodel.model.named_modules())}
    return sorted(qmodel.decided + qmodel.fixed, key=lambda q: rank[q.name])


def input_bits(qmodel, decision: Mapping[str, Any]) -> Dict[str, int]:
    """Input-activation width per quantized layer: a decided layer's from the decision (its
    option's width, one of the layer's calibrated widths), a fixed layer's its only one."""
    out = {}
    for q in qmodel.decided:
        a = int(decision["layers"][q.name]["a_bits"])
        if a not in q.a_widths:
            raise InputError(f"decision: layer {q.name} has a_bits {a}, but its input quantizers are calibrated at "
                             f"{q.a_widths} bits")
        out[q.name] = a
    for q in qmodel.fixed:
        out[q.name] = q.a_widths[0]
    return out


def quantizer_specs(qmodel, decision: Mapping[str, Any]) -> List[QuantizerSpec]:
    """Two specs per decided and fixed layer (its weight at its width, then its input at its
    activation width), in module order."""
    bits = weight_bits(qmodel, decision)
    acts = input_bits(qmodel, decision)
    fixed = {q.name for q in qmodel.fixed}
    specs = []
    for q in ordered_layers(qmodel):
        role = "fixed" if q.name in fixed else "decided"
        specs.append(spec_of(q.w_fq[str(bits[q.name])], q.name, "weight", role, q.layer.weight.shape))
        specs.append(spec_of(q.act_fq(acts[q.name]), q.name, "input", role))
    return specs


def dequantized_weight(qmodel, name: str, bits: int) -> torch.Tensor:
    """The fake-quantized weight exactly as clado's QuantModel uses it."""
    return qmodel.qlayers[name].quantized_weight(bits).detach().cpu()


def integer_weight(spec: QuantizerSpec, deq: torch.Tensor) -> torch.Tensor:
    """The integers q with (q - z) * s == deq bit for bit (int64). Raises if deq is not on the
    spec's grid (a bug, or a quantizer changed after its weights were cached)."""
    s = torch.tensor(spec.scale, dtype=torch.float32)
    z = torch.tensor(spec.zero_point, dtype=torch.int64)
    if spec.per_channel:
        view = [1] * deq.dim()
        view[spec.axis] = -1
        s, z = s.reshape(view), z.reshape(view)
    deq = deq.float()
    q = torch.round(deq / s).to(torch.int64) + z
    back = (q - z).float() * s
    if bool((q < spec.qmin).any() or (q > spec.qmax).any()) or not torch.equal(back, deq):
        raise InputError(f"{spec.layer}: its quantized weight is not on the {spec.bits}-bit grid of its quantizer")
    return q


def packed_bytes(specs: List[QuantizerSpec]) -> Dict[str, float]:
    """Weight bytes at each layer's own width (what the decision budgets) and as stored in the
    narrowest ONNX type (INT4/UINT4 two to a byte, INT8 one)."""
    exact = stored = 0.0
    for sp in specs:
        if sp.tensor != "weight":
            continue
        n = 1
        for d in sp.shape or []:
            n *= int(d)
        exact += n * sp.bits / 8
        stored += (n + 1) // 2 if TYPE_BITS[sp.storage_type] == 4 else n * TYPE_BITS[sp.storage_type] // 8
    return {"weight_bytes_at_width": exact, "packed_weight_bytes": stored}

"""A model whose quantizable layers can each be put in float or fake-quantized states.

Every quantizable layer is wrapped in a `QLayer` that holds MQBench quantizers made by
`get_qconfig_by_platform(BackendType.Academic, ...)`: one `FixedFakeQuantize` weight quantizer
per candidate width (each calibrated once on the weight; docs/methods.md, "Quantizers"), and one
input-activation quantizer per activation width of its options (usually one), all calibrated
together, once, on the calibration set with every fake-quant off. Applying options only flips
per-layer state: no deep copies.

An option's key is its weight width (an int) when every option has the same activation width,
and the pair (weight bits, activation bits) when they differ (`quant.options`).

Two ways to run a quantized weight, with identical numbers:
  - reference: the weight fake-quantizer runs on every forward pass (the straightforward way);
  - cached: the fake-quantized weight was computed once and is swapped in.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import QuantConfig, QuantizerConfig
from ..errors import ConfigError
from .layers import LayerPlan

_QCONFIG_CACHE: Dict[tuple, object] = {}


def _quiet_mqbench():
    from mqbench.utils.logger import set_log_level

    set_log_level(logging.WARNING)  # MQBench logs its qconfig at INFO to stdout


def make_qconfig(w: QuantizerConfig, w_bits: int, a: QuantizerConfig, a_bits: int):
    """The MQBench QConfig (weight and activation fake-quant factories) for these settings."""
    key = (tuple(w.model_dump().items()), w_bits, tuple(a.model_dump().items()), a_bits)
    if key not in _QCONFIG_CACHE:
        _quiet_mqbench()
        from mqbench.prepare_by_platform import BackendType, get_qconfig_by_platform

        if a.per_channel:
            raise ConfigError("quant.activation.per_channel: per-channel activation quantization is not supported")
        extra = {
            "w_observer": w.observer, "a_observer": a.observer,
            "w_fakequantize": "FixedFakeQuantize", "a_fakequantize": "FixedFakeQuantize",
            "w_qscheme": {"bit": w_bits, "symmetry": w.symmetric, "per_channel": w.per_channel,
                          "pot_scale": w.pot_scale},
            "a_qscheme": {"bit": a_bits, "symmetry": a.symmetric, "per_channel": False,
                          "pot_scale": a.pot_scale},
        }
        _QCONFIG_CACHE[key] = get_qconfig_by_platform(BackendType.Academic, extra)
    return _QCONFIG_CACHE[key]


def fake_quant_activation(fq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`fq(x)` for an activation FixedFakeQuantize with its fake-quant on and its observer off,
    bit for bit, in about a fifth of the time on CPU: torch.fake_quantize_per_tensor_affine's CPU
    kernel also builds the gradient mask. Computes what that kernel computes,
    (clamp(nearbyint(x * (1.0f / s)) + z, qmin, qmax) - z) * s in float32, as
    clamp(round(x * inv), qmin - z, qmax - z) * s (z is an integer, so the two agree exactly).
    Falls back to `fq(x)` when gradients are wanted, for per-channel quantizers, for other dtypes
    and whenever the observer is on."""
    if (torch.is_grad_enabled() and x.requires_grad) or x.dtype != torch.float32 \
            or getattr(fq, "is_per_channel", True) or fq.observer_enabled[0] == 1 or fq.fake_quant_enabled[0] != 1:
        return fq(x)
    sc = fq.scale.detach().to(torch.float32).reshape(())
    inv = float(torch.ones((), dtype=torch.float32) / sc)
    z = int(fq.zero_point.item())
    return torch.mul(x, inv).round_().clamp_(fq.quant_min - z, fq.quant_max - z).mul_(float(sc))


def _plain_forward(layer: nn.Module):
    """A fast call for layers whose forward is the stock one; None for subclasses that
    override forward (those go through torch.func.functional_call)."""
    cls_forward = type(layer).forward
    if isinstance(layer, nn.Linear) and cls_forward is nn.Linear.forward:
        return lambda x, w: F.linear(x, w, layer.bias)
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(layer, base) and cls_forward is base.forward:
            return lambda x, w: layer._conv_forward(x, w, layer.bias)
    return None


class QLayer(nn.Module):
    """Wraps one quantizable layer. State: `w_bits` (None = float weights), `a_on` (input
    activation fake-quantized or not), `a_bits` (the activation width used when `a_on`; one of
    `a_widths`), `cached` (use precomputed quantized weights).

    `a_fq` is the input quantizer of the first activation width; a layer with several widths
    keeps the others in `a_fq_more` (`act_fq(bits)` gives any of them)."""

    def __init__(self, name: str, layer: nn.Module, w_bits: Iterable[int], a_bits, quant: QuantConfig):
        super().__init__()
        self.name = name
        self.layer = layer
        self.a_widths: List[int] = sorted({int(a_bits)} if isinstance(a_bits, int) else {int(a) for a in a_bits})
        self.a_bits = self.a_widths[0]
        self.w_fq = nn.ModuleDict()
        for b in w_bits:
            qc = make_qconfig(quant.weight, b, quant.activation, self.a_bits)
            self.w_fq[str(b)] = qc.weight()
        self.a_fq = self._new_act(quant, self.a_widths[0])
        self.a_fq_more = nn.ModuleDict({str(a): self._new_act(quant, a) for a in self.a_widths[1:]})
        self.w_bits: Optional[int] = None
        self.a_on = False
        self.cached = True
        self.calibrating = False
        self.qweight: Dict[int, torch.Tensor] = {}
        self._plain = _plain_forward(layer)

    @staticmethod
    def _new_act(quant: QuantConfig, bits: int) -> nn.Module:
        fq = make_qconfig(quant.weight, 8, quant.activation, bits).activation()
        fq.disable_observer()
        fq.disable_fake_quant()
        return fq

    def act_fq(self, bits: Optional[int] = None) -> nn.Module:
        """The input quantizer of activation width `bits` (default: the selected `a_bits`)."""
        bits = self.a_bits if bits is None else int(bits)
        if bits == self.a_widths[0]:
            return self.a_fq
        if str(bits) not in self.a_fq_more:
            raise ConfigError(f"layer {self.name} has no {bits}-bit input quantizer (its widths: {self.a_widths})")
        return self.a_fq_more[str(bits)]

    def act_fqs(self) -> List[Tuple[int, nn.Module]]:
        """(width, input quantizer) of every activation width of this layer."""
        return [(a, self.act_fq(a)) for a in self.a_widths]

    def select(self, key) -> None:
        """Apply an option: its weight width, and its input quantized (at its activation width
        when the key is a (weight bits, activation bits) pair)."""
        if isinstance(key, tuple):
            w, a = key
            if int(a) not in self.a_widths:
                raise ConfigError(f"layer {self.name} has no {a}-bit input quantizer (its widths: {self.a_widths})")
            self.a_bits = int(a)
        else:
            w = key
        self.w_bits, self.a_on = int(w), True

    @property
    def bit_options(self) -> List[int]:
        return [int(b) for b in self.w_fq.keys()]

    @torch.no_grad()
    def calibrate_weights(self) -> None:
        w = self.layer.weight.detach()
        for b, fq in self.w_fq.items():
            fq.to(w.device)
            fq.enable_observer()
            fq.disable_fake_quant()
            fq(w)
            fq.disable_observer()
            fq.enable_fake_quant()
        self.refresh_cache()

    @torch.no_grad()
    def refresh_cache(self) -> None:
        w = self.layer.weight.detach()
        self.qweight = {int(b): fq(w).detach() for b, fq in self.w_fq.items()}

    def quantized_weight(self, bits: int) -> torch.Tensor:
        return self.qweight[bits]

    def weight_for(self, bits: Optional[int]) -> torch.Tensor:
        if bits is None:
            return self.layer.weight
        if self.cached:
            return self.qweight[bits]
        return self.w_fq[str(bits)](self.layer.weight)

    def forward(self, x):
        if self.calibrating:
            for _, fq in self.act_fqs():
                fq(x)  # observer on, fake-quant off: records the input range only
        elif self.a_on:
            x = fake_quant_activation(self.act_fq(), x)
        if self.w_bits is None:
            return self.layer(x)
        w = self.weight_for(self.w_bits)
        if self._plain is not None:
            return self._plain(x, w)
        return torch.func.functional_call(self.layer, {"weight": w}, (x,))

    def __getattr__(self, name: str):
        """Attributes the model's own code reads from the layer it called (a Hugging Face patch
        embedding reads `projection.weight.dtype`, others `in_features`) come from the wrapped
        layer."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "layer":
                raise
            return getattr(super().__getattr__("layer"), name)

    def extra_repr(self):
        return (f"name={self.name}, w_bits={self.w_bits}, a_on={self.a_on}, a_bits={self.a_bits}, "
                f"options={self.bit_options}")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


class QuantModel(nn.Module):
    """The user's model with every decided and fixed layer wrapped in a QLayer.

    Decided layers get one weight quantizer per weight width of the options and one input
    quantizer per activation width (`quant.activation_bits`, or those of `quant.options`); fixed
    layers get their fixed widths. The float model passed in is deep-copied once, so the
    caller's model stays untouched.

    `pairs[k]`: (weight bits, activation bits) of candidate k; `candidates[k]` its weight bits;
    `keys[k]` how an option names it (see the module docstring).
    """

    def __init__(self, float_model: nn.Module, plan: LayerPlan, quant: QuantConfig,
                 fixed_w_bits: int = 8, fixed_a_bits: int = 8):
        super().__init__()
        import copy

        self.model = copy.deepcopy(float_model).eval()
        self.plan = plan
        self.pairs: List[Tuple[int, int]] = [(int(w), int(a)) for w, a in quant.pairs()]
        self.act_options = quant.act_options
        self.candidates = [w for w, _ in self.pairs]
        self.keys = list(self.pairs) if self.act_options else list(self.candidates)
        self.fixed_w_bits = fixed_w_bits
        self.qlayers: Dict[str, QLayer] = {}
        for info in plan.decided:
            self._wrap(info.name, sorted(set(self.candidates)), [a for _, a in self.pairs], quant)
        for info in plan.fixed:
            self._wrap(info.name, [fixed_w_bits], fixed_a_bits, quant)
        self.decided = [self.qlayers[n] for n in plan.decided_names]
        self.fixed = [self.qlayers[n] for n in plan.fixed_names]

    def _wrap(self, name, w_bits, a_bits, quant):
        q = QLayer(name, self.model.get_submodule(name), w_bits, a_bits, quant)
        _set_submodule(self.model, name, q)
        self.qlayers[name] = q

    def forward(self, x):
        return self.model(x)

    # -- options ---------------------------------------------------------------------------
    @property
    def options(self) -> List[Tuple[str, int]]:
        """Option order (docs/methods.md, "Terms"): i = l*B + k for decided layer l and candidate index k."""
        return [(q.name, key) for q in self.decided for key in self.keys]

    def reset(self) -> None:
        """Every layer back to float."""
        for q in self.qlayers.values():
            q.w_bits, q.a_on = None, False

    def apply(self, options: Iterable[Tuple[str, object]]) -> None:
        """Float everywhere except the given options (layer name, key), each applied as
        docs/methods.md ("Quantizers") defines it: the layer's weights at w bits AND its input
        activation fake-quantized (at a bits for a (w, a) key, else at its one width)."""
        self.reset()
        for name, key in options:
            self.qlayers[name].select(key)

    def set_decision(self, bits_by_layer: Mapping[str, object]) -> None:
        """The mixed-precision model: decided layers per the decision (a weight width, or a
        (weight bits, activation bits) pair, per layer), fixed layers at their fixed precision,
        every input activation quantized."""
        self.reset()
        for q in self.decided:
            key = bits_by_layer[q.name]
            q.select(tuple(int(b) for b in key) if isinstance(key, tuple) else int(key))
        for q in self.fixed:
            q.w_bits, q.a_on = self.fixed_w_bits, True

    def set_uniform(self, bits: int) -> None:
        self.set_decision({q.name: bits for q in self.decided})

    def set_cached(self, cached: bool) -> None:
        for q in self.qlayers.values():
            q.cached = cached

    # -- calibration -----------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor], device=None) -> None:
        """Weight quantizers once on the weights; input quantizers on the calibration
        batches with every fake-quant off."""
        self.reset()
        for q in self.qlayers.values():
            q.calibrate_weights()
            for _, fq in q.act_fqs():
                fq.enable_observer()
                fq.disable_fake_quant()
            q.calibrating = True
        try:
            for x in batches:
                self.model(x if device is None else x.to(device))
        finally:
            for q in self.qlayers.values():
                q.calibrating = False
                for _, fq in q.act_fqs():
                    fq.disable_observer()
                    fq.enable_fake_quant()

    def quant_state(self) -> Dict[str, torch.Tensor]:
        """Scales and zero points of every quantizer (to cache a calibration)."""
        out = {}
        for name, q in self.qlayers.items():
            for key, fq in _act_keys(q):
                out[f"{key}|scale"] = fq.scale.detach().cpu().clone()
                out[f"{key}|zero_point"] = fq.zero_point.detach().cpu().clone()
            for b, fq in q.w_fq.items():
                out[f"{name}|w{b}|scale"] = fq.scale.detach().cpu().clone()
                out[f"{name}|w{b}|zero_point"] = fq.zero_point.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_quant_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, q in self.qlayers.items():
            pairs = [(fq, key) for key, fq in _act_keys(q)] + [(fq, f"{name}|w{b}") for b, fq in q.w_fq.items()]
            for fq, key in pairs:
                for attr in ("scale", "zero_point"):
                    val = state[f"{key}|{attr}"]
                    buf = getattr(fq, attr)
                    buf.resize_(val.shape)
                    buf.copy_(val.to(buf.device))
                fq.disable_observer()
                fq.enable_fake_quant()
            q.refresh_cache()
        self.reset()


def _act_keys(q: QLayer) -> List[Tuple[str, nn.Module]]:
    """The quant-state key prefix of each input quantizer of a layer: `name|a` for a layer with one
    activation width (as before activation options existed), `name|a4`, `name|a8` for several."""
    if len(q.a_widths) == 1:
        return [(f"{q.name}|a", q.a_fq)]
    return [(f"{q.name}|a{a}", fq) for a, fq in q.act_fqs()]

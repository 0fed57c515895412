"""The `weights` format: the float model's state_dict with each quantized weight replaced by its
dequantized value (safetensors), beside the encodings; and `load_quantized`, which turns the
original model plus these two files back into clado's fake-quant model, bit for bit."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from ..errors import InputError
from .encodings import read_encodings
from .module import build_quantized_module
from .quantizers import QuantizerSpec

WEIGHTS_FORMAT = "clado.weights/1"


def encodings_path_for(weights_path) -> Path:
    """`model.safetensors` -> `model.encodings.json` beside it."""
    p = Path(weights_path)
    return p.with_name(p.name[: -len(p.suffix)] + ".encodings.json" if p.suffix else p.name + ".encodings.json")


def weights_bytes(float_model: nn.Module, deq: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> bytes:
    """safetensors bytes of the state_dict, `<layer>.weight` replaced by the dequantized weight."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().clone().contiguous() for k, v in float_model.state_dict().items()}
    for layer, w in deq.items():
        key = f"{layer}.weight"
        if key not in state:
            raise InputError(f"layer {layer}: no {key} in the model's state_dict")
        state[key] = w.detach().cpu().to(state[key].dtype).clone().contiguous()
    return save(state, metadata={"format": WEIGHTS_FORMAT, **dict(meta)})


def load_quantized(model: nn.Module, weights_path, encodings_path: Optional[str] = None) -> nn.Module:
    """A new module computing clado's fake-quant model: a copy of `model` (the original
    architecture, any weights) with the exported state_dict loaded (quantized weights already
    dequantized) and the input of every quantized layer fake-quantized per the encodings.
    Each quantized layer is wrapped in `QuantizedLayer` (the original at `.layer`).

    `encodings_path`: default `<weights stem>.encodings.json` beside the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wp = Path(weights_path)
    if not wp.is_file():
        raise InputError(f"weights file not found: {wp}")
    ep = Path(encodings_path) if encodings_path is not None else encodings_path_for(wp)
    _, specs = read_encodings(ep)
    try:
        state = load_file(str(wp))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"weights file {wp} is not a readable safetensors file: {exc}") from None
    _check_layers(model, specs)
    plain = copy.deepcopy(model)
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"weights file {wp} does not fit the model: {first}") from None
    return build_quantized_module(plain, specs).eval()


def _check_layers(model: nn.Module, specs: List[QuantizerSpec]) -> None:
    names = dict(model.named_modules())
    for sp in specs:
        if sp.layer not in names:
            raise InputError(f"encodings name layer {sp.layer!r}, which the model does not have")


def read_weights_metadata(path) -> Dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})

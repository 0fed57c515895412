"""Reading weights: state_dict files only with torch.load(weights_only=True) or safetensors,
checked against the model's own keys and shapes before loading."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import InputError


def _num_classes(cfg, data) -> Optional[int]:
    if cfg.num_classes:
        return cfg.num_classes
    if data is not None and data.num_classes:
        return data.num_classes
    return None


def read_state_dict(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:
            raise InputError(f"weights file {p} is not a readable safetensors file: {exc}") from None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise InputError(f"weights file {p} needs pickle to load (refused: only plain state_dicts "
                             f"of tensors are loaded, with weights_only=True)") from None
        raise InputError(f"weights file {p} is truncated or not a state_dict: {first}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"weights file {p} does not hold a state_dict of tensors")
    return sd


def _load_state_dict_file(model: nn.Module, path: str) -> None:
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise InputError(f"weights file {path} does not fit the model: {what} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise InputError(f"weights file {path} does not fit the model: {k} has shape "
                             f"{tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(sd)

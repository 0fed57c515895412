"""Models from the wild and the preprocessing they carry.

- `timm:NAME`: any timm model, built with pretrained=False (timm never downloads here); weights
  `none` (seeded random init), a state_dict file, or a local directory holding timm's
  config.json (architecture, num_classes, pretrained_cfg) and model.safetensors or
  pytorch_model.bin. Its preprocessing: timm's pretrained config through
  `timm.data.resolve_data_config` (what `resolve_model_data_config(model)` returns).
- `hf:PATH`: a local Hugging Face image-classification directory: AutoModelForImageClassification
  (local_files_only) wrapped so that forward(x) returns the logits tensor; its preprocessing:
  AutoImageProcessor's config.
- torchvision names with weights DEFAULT or a weights enum name: `weights.transforms()`.

`model_preprocessing(cfg)` gives a model's preprocessing as data.transform keys (plus `source`)
without building the model, or None when the model carries none.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..errors import InputError, UsageError

# PIL resampling codes (Hugging Face processors store these) -> torchvision interpolation names
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"this model needs the {module} package: pip install 'clado-cli[wild]' "
                         f"(or pip install {module})") from None


# ------------------------------------------------------------------------------ torchvision


def torchvision_weights(name: str, weights: str):
    """The torchvision weights enum member that `weights` names for model `name` (DEFAULT,
    IMAGENET1K_V2 or ResNet50_Weights.IMAGENET1K_V2), or None when it names none (none, a file)."""
    import torchvision.models as tvm

    if weights == "none":
        return None
    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    if member in enum.__members__ and not Path(weights).is_file():
        return enum[member]
    return None


def _from_torchvision_weights(w) -> Dict[str, Any]:
    t = w.transforms()
    crop = list(getattr(t, "crop_size", [224]))
    resize = list(getattr(t, "resize_size", []) or [])
    interp = getattr(t, "interpolation", None)
    return {"input_size": crop[0] if len(crop) == 1 else crop,
            "resize": (resize[0] if len(resize) == 1 else resize) if resize else None,
            "interpolation": getattr(interp, "value", "bilinear"),
            "center_crop": True,
            "mean": [float(x) for x in t.mean], "std": [float(x) for x in t.std],
            "channels": "rgb", "normalize": "mean_std",
            "source": f"torchvision {type(w).__name__}.{w.name}.transforms()"}


# ------------------------------------------------------------------------------ timm


def _timm_name(spec: str) -> str:
    name = spec.split(":", 1)[1].strip()
    if not name:
        raise UsageError("timm model: give its name, timm:NAME (e.g. timm:resnet18)")
    return name


def _timm_dir_config(weights: str) -> Optional[Dict[str, Any]]:
    p = Path(weights).expanduser()
    if not p.is_dir():
        return None
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"timm weights directory {weights} has no config.json (timm's pretrained config)")
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"timm config {cfg_path} is not readable JSON: {exc}") from None


def _timm_pretrained_cfg(name: str, weights: str) -> Dict[str, Any]:
    timm = _need("timm")
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(name):
        from ..registry import unknown_name_message

        raise UsageError(unknown_name_message("timm model", name, timm.list_models()))
    base = get_pretrained_cfg(name)
    cfg = base.to_dict() if base is not None else {}
    dir_cfg = _timm_dir_config(weights) if weights not in ("none", "DEFAULT") else None
    if dir_cfg:
        cfg.update(dir_cfg.get("pretrained_cfg") or {})
    return cfg


def timm_preprocessing(name: str, weights: str) -> Dict[str, Any]:
    from timm.data import resolve_data_config

    pcfg = _timm_pretrained_cfg(name, weights)
    dc = resolve_data_config(pretrained_cfg=pcfg)
    c, h, w = dc["input_size"]
    return {"input_size": h if h == w else [h, w], "crop_pct": float(dc.get("crop_pct") or 1.0),
            "center_crop": dc.get("crop_mode", "center") == "center",
            "interpolation": dc.get("interpolation") or "bilinear",
            "mean": [float(x) for x in dc["mean"]], "std": [float(x) for x in dc["std"]],
            "channels": "rgb" if c == 3 else "grayscale", "normalize": "mean_std",
            "source": f"timm pretrained_cfg of {name}" + (f" ({weights}/config.json)" if Path(weights).is_dir() else "")}


def build_timm(cfg, data, log=None) -> nn.Module:
    """A timm model, never downloading: pretrained=False, then weights from a file or a dir."""
    _need("timm")
    import timm

    from .loading import _load_state_dict_file, _num_classes, read_state_dict

    name = _timm_name(cfg.name)
    pcfg = _timm_pretrained_cfg(name, cfg.weights)
    kwargs: Dict[str, Any] = {}
    weights = cfg.weights
    if weights == "DEFAULT":
        raise UsageError("timm models are never downloaded: set model.weights to none, a state_dict file, "
                         "or a local directory with config.json and model.safetensors")
    dir_cfg = _timm_dir_config(weights) if weights != "none" else None
    file = None
    if dir_cfg is not None:
        d = Path(weights).expanduser()
        file = next((str(d / f) for f in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
                     if (d / f).is_file()), None)
        if file is None:
            raise InputError(f"timm weights directory {weights}: no model.safetensors or pytorch_model.bin")
        arch = dir_cfg.get("architecture")
        if arch and arch != name:
            raise InputError(f"timm weights directory {weights} is for {arch}, not {name}")
        if dir_cfg.get("num_classes"):
            kwargs["num_classes"] = int(dir_cfg["num_classes"])
        for k in ("in_chans", "global_pool"):
            if dir_cfg.get(k) is not None:
                kwargs[k] = dir_cfg[k]
        if "model_args" in dir_cfg and isinstance(dir_cfg["model_args"], dict):
            kwargs.update(dir_cfg["model_args"])
    elif weights != "none":
        file = weights
    if "num_classes" not in kwargs:
        nc = cfg.num_classes or (_classes_in(read_state_dict(file), pcfg) if file else None) or _num_classes(cfg, data)
        if nc:
            kwargs["num_classes"] = int(nc)
    torch.manual_seed(0)  # 'none' is a seeded random init, so runs are repeatable
    try:
        # plain attention instead of the fused kernel: HAWQ's Hessian-vector products need a
        # second derivative, which the CPU flash-attention kernel does not have (same numbers
        # up to rounding; only models built from here on are affected)
        from timm.layers import set_fused_attn

        set_fused_attn(False)
    except ImportError:
        pass
    try:
        model = timm.create_model(name, pretrained=False, pretrained_cfg_overlay=(dir_cfg or {}).get("pretrained_cfg"),
                                  **kwargs)
    except Exception as exc:
        raise InputError(f"timm could not build {name}: {type(exc).__name__}: {exc}") from None
    if file is not None:
        _load_state_dict_file(model, file)
    return model


def _classes_in(sd: Dict[str, torch.Tensor], pcfg: Dict[str, Any]) -> Optional[int]:
    """The classifier's output count in a state dict, from the pretrained config's classifier name."""
    head = pcfg.get("classifier")
    heads = head if isinstance(head, (list, tuple)) else [head] if head else []
    for h in heads:
        b = sd.get(f"{h}.bias")
        w = sd.get(f"{h}.weight")
        if b is not None and b.dim() == 1:
            return int(b.shape[0])
        if w is not None and w.dim() >= 2:
            return int(w.shape[0])
    return None


# ------------------------------------------------------------------------------ Hugging Face


class HFLogits(nn.Module):
    """A Hugging Face image classifier whose forward(x) returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _hf_dir(spec: str) -> Path:
    path = spec.split(":", 1)[1].strip()
    if not path:
        raise UsageError("Hugging Face model: give its local directory, hf:PATH")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"Hugging Face model directory not found: {path} (hf:PATH takes a local directory; "
                         f"clado never downloads)")
    if not (p / "config.json").is_file():
        raise InputError(f"Hugging Face model directory {path} has no config.json")
    return p


def build_hf(cfg, data, log=None) -> nn.Module:
    _need("transformers")
    from transformers import AutoModelForImageClassification

    from .loading import _load_state_dict_file

    p = _hf_dir(cfg.name)
    if cfg.weights == "none":  # the directory's architecture with a seeded random init
        from transformers import AutoConfig

        torch.manual_seed(0)
        try:
            model = AutoModelForImageClassification.from_config(
                AutoConfig.from_pretrained(str(p), local_files_only=True), attn_implementation="eager")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"cannot build the Hugging Face model of {p}: {type(exc).__name__}: {first}") from None
        return HFLogits(model.eval())
    try:
        # eager attention: HAWQ's Hessian-vector products need a second derivative, which the
        # CPU flash-attention kernel behind sdpa does not have
        model = AutoModelForImageClassification.from_pretrained(str(p), local_files_only=True,
                                                                attn_implementation="eager")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load the Hugging Face model at {p}: {type(exc).__name__}: {first}") from None
    wrapped = HFLogits(model.eval())
    if cfg.weights != "DEFAULT":
        _load_state_dict_file(wrapped.model, cfg.weights)
    return wrapped


def hf_preprocessing(spec: str) -> Optional[Dict[str, Any]]:
    p = _hf_dir(spec)
    if not (p / "preprocessor_config.json").is_file():
        return None
    _need("transformers")
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read the image processor at {p}: {first}") from None
    d = proc.to_dict()
    out: Dict[str, Any] = {"channels": "rgb", "source": f"{type(proc).__name__} of {p}"}
    size = d.get("size") or {}
    crop = d.get("crop_size") or {}
    resample = d.get("resample")
    out["interpolation"] = _PIL_RESAMPLE.get(int(resample) if resample is not None else 2, "bilinear")
    do_resize = d.get("do_resize", True)
    if d.get("do_center_crop") and crop:
        out["input_size"] = _hw(crop)
        out["center_crop"] = True
        if do_resize and size:
            out["resize"] = _hw(size)
    elif "shortest_edge" in size and d.get("crop_pct") is not None:
        # ConvNeXt's rule: below 384, resize the shorter side to edge / crop_pct and crop edge;
        # at 384 and more, warp to edge x edge
        edge = int(size["shortest_edge"])
        out["input_size"] = edge
        if edge < 384:
            out["resize"] = int(edge / float(d["crop_pct"]))
            out["center_crop"] = True
        else:
            out["resize"], out["center_crop"] = [edge, edge], False
    elif size:
        hw = _hw(size)
        out["input_size"] = hw
        out["resize"] = hw if isinstance(hw, list) else [hw, hw]
        out["center_crop"] = False
    if d.get("do_normalize", True):
        out["mean"] = [float(x) for x in d.get("image_mean") or (0.5, 0.5, 0.5)]
        out["std"] = [float(x) for x in d.get("image_std") or (0.5, 0.5, 0.5)]
        out["normalize"] = "mean_std"
    else:
        out["normalize"] = "none"
    if d.get("do_rescale", True) and not math.isclose(float(d.get("rescale_factor", 1 / 255)), 1 / 255, rel_tol=1e-6):
        raise InputError(f"the image processor at {p} rescales by {d.get('rescale_factor')}, not 1/255: "
                         f"set data.transform by hand")
    return out


def _hw(size: Dict[str, Any]):
    if "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        return h if h == w else [h, w]
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise InputError(f"image processor size {size}: expected height/width or shortest_edge")


# ------------------------------------------------------------------------------ dispatch


def model_preprocessing(cfg) -> Optional[Dict[str, Any]]:
    """The preprocessing the model carries, as data.transform keys plus `source`; None if none."""
    name = cfg.name
    if name.startswith("timm:"):
        return timm_preprocessing(_timm_name(name), cfg.weights)
    if name.startswith("hf:"):
        return hf_preprocessing(name)
    if ":" in name or name == "embedded":
        return None
    w = torchvision_weights(name, cfg.weights)
    return _from_torchvision_weights(w) if w is not None else None

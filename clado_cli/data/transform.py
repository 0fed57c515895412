"""The preprocessing of file-backed data (`idx:`, `imagefolder:`, `images:`): one resolved
record, `Transform`, built in three layers, each overriding the one before it:

1. the source's default (what clado always did): imagefolder/images: RGB, Resize(side*256/224)
   (bilinear), CenterCrop(side), ImageNet mean/std with side = data.image_size; idx: the files'
   own size and channel, MNIST's mean/std;
2. the model's own preprocessing when it has one (clado_cli.models.model_preprocessing:
   torchvision weights' transforms(), timm's pretrained config, a Hugging Face image processor);
3. every key set in the config's `data.transform`.

Images go: channels (RGB/grayscale conversion) -> resize (shorter side, or exact height x width)
-> center crop to input_size (when center_crop) -> pixels in [0, 1] -> (x - mean) / std unless
normalize is none. The same steps run on PIL images (files) and on tensors (IDX arrays).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# the sources that read files and so take a transform
FILE_SOURCES = ("idx", "imagefolder", "images")


@dataclass
class Transform:
    """A resolved preprocessing. `resize`: None (no resize), [side] (shorter side) or
    [height, width] (exact). `input_size`: [height, width] of the model input."""

    input_size: Tuple[int, int]
    resize: Optional[Tuple[int, ...]]
    interpolation: str
    center_crop: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    channels: str            # rgb | grayscale
    normalize: bool
    source: str = "default"  # where the settings came from: default, the model's, config keys
    origin: Dict[str, str] = field(default_factory=dict)  # key -> default | model | config

    @property
    def num_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["resize"] = list(self.resize) if self.resize is not None else None
        d["mean"] = [float(m) for m in self.mean]
        d["std"] = [float(s) for s in self.std]
        return d

    def describe(self) -> str:
        h, w = self.input_size
        parts = [self.channels]
        if self.resize is not None:
            parts.append(f"resize {'x'.join(str(r) for r in self.resize)} ({self.interpolation})")
        if self.center_crop:
            parts.append(f"center crop {h}x{w}")
        elif self.resize is None:
            parts.append(f"{h}x{w}")
        if self.normalize:
            parts.append("normalize mean " + _fmt(self.mean) + " std " + _fmt(self.std))
        else:
            parts.append("no normalization (pixels in [0, 1])")
        return ", ".join(parts) + f"; from {self.source}"

    # -- applying ---------------------------------------------------------------------------
    def pil(self):
        """A callable PIL image -> float32 CHW tensor."""
        return _PilTransform(self)

    def mean_std(self, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
        m, s = _per_channel(self.mean, channels, "mean"), _per_channel(self.std, channels, "std")
        return torch.tensor(m).view(-1, 1, 1), torch.tensor(s).view(-1, 1, 1)

    def output_shape(self) -> Tuple[int, int, int]:
        return (self.num_channels, int(self.input_size[0]), int(self.input_size[1]))

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Batch (N, C, H, W) of pixels in [0, 1] -> model inputs."""
        from torchvision.transforms import functional as TF

        c = x.shape[1]
        if self.channels == "rgb" and c == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == "grayscale" and c == 3:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        elif c != self.num_channels:
            raise UsageError(f"data.transform.channels {self.channels}: cannot convert {c}-channel images")
        if self.resize is not None:
            x = TF.resize(x, list(self.resize), interpolation=_mode(self.interpolation), antialias=True)
        if self.center_crop:
            x = TF.center_crop(x, list(self.input_size))
        elif tuple(x.shape[-2:]) != tuple(self.input_size):
            x = TF.resize(x, list(self.input_size), interpolation=_mode(self.interpolation), antialias=True)
        if self.normalize:
            m, s = self.mean_std(x.shape[1])
            if x.shape[1] == 1 and len(self.mean) == 1 and len(self.std) == 1:
                x = (x - float(self.mean[0])) / float(self.std[0])  # exactly what clado always computed
            else:
                x = (x - m) / s
        return x.contiguous()


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def _per_channel(v: Sequence[float], channels: int, what: str):
    v = [float(x) for x in v]
    if len(v) == channels:
        return v
    if len(v) == 1:
        return v * channels
    raise UsageError(f"data.transform.{what} has {len(v)} values for {channels}-channel images "
                     f"(give {channels} or one)")


def _mode(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


class _PilTransform:
    """Module-level so DataLoader workers can pickle it."""

    def __init__(self, t: Transform):
        self.t = t

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        t = self.t
        img = img.convert("RGB" if t.channels == "rgb" else "L")
        if t.resize is not None:
            img = TF.resize(img, list(t.resize), interpolation=_mode(t.interpolation), antialias=True)
        if t.center_crop:
            img = TF.center_crop(img, list(t.input_size))
        elif (img.height, img.width) != tuple(t.input_size):
            img = TF.resize(img, list(t.input_size), interpolation=_mode(t.interpolation), antialias=True)
        x = TF.to_tensor(img)
        if t.normalize:
            x = TF.normalize(x, _per_channel(t.mean, x.shape[0], "mean"), _per_channel(t.std, x.shape[0], "std"))
        return x

    def __repr__(self):
        return f"Transform({self.t.describe()})"


# ------------------------------------------------------------------------------ resolving


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (int(v), int(v))
    v = list(v)
    return (int(v[0]), int(v[1]))


def source_default(kind: str, image_size: int, native: Optional[Tuple[int, int, int]] = None) -> Dict[str, Any]:
    """What each source always did (kept as the default where nothing better is known).
    imagefolder/images: Resize(int(side*256/224)) = crop_pct 224/256 (the legacy formula is kept)."""
    if kind == "idx":
        c, h, w = native or (1, 28, 28)
        return {"input_size": (h, w), "resize": None, "crop_pct": None, "interpolation": "bilinear",
                "center_crop": False, "mean": (MNIST_MEAN,), "std": (MNIST_STD,),
                "channels": "rgb" if c == 3 else "grayscale", "normalize": True}
    return {"input_size": (image_size, image_size), "resize": None, "crop_pct": 224 / 256,
            "interpolation": "bilinear", "center_crop": True, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "channels": "rgb", "normalize": True}


def resolve_transform(kind: str, image_size: int = 224, explicit: Optional[Dict[str, Any]] = None,
                      model_pre: Optional[Dict[str, Any]] = None,
                      native: Optional[Tuple[int, int, int]] = None) -> Optional[Transform]:
    """The transform for a source of `kind` (None for sources that take none: digits,
    synthetic). `explicit`: the keys set in data.transform. `model_pre`: the model's preprocessing (keys as data.transform's, plus
    `source` naming it), or None. `native`: (C, H, W) of IDX images.

    Each layer (source default, model, config) overrides the keys it sets; a layer that sets
    `resize` drops an earlier `crop_pct` and the other way round. With crop_pct, the resize is
    floor(side / crop_pct) of the input's side (timm's rule; the default keeps clado's
    int(side * 256 / 224)) and the crop is central unless center_crop says otherwise. A layer
    that sets input_size alone scales an earlier resize by the same factor (torchvision's 256/224
    becomes 73/64 for input_size 64; an exact resize to the input size follows the input size)."""
    explicit = dict(explicit or {})
    if kind not in FILE_SOURCES:
        if explicit:
            raise UsageError(f"data.transform ({', '.join(explicit)}) applies to idx:, imagefolder: and images: "
                             f"data, not {kind}")
        return None
    values = source_default(kind, int(image_size), native)
    origin = {k: "default" for k in values}
    sources = []
    for layer, who in ((dict(model_pre or {}), "model"), (dict(explicit), "config")):
        label = layer.pop("source", None)
        layer = {k: v for k, v in layer.items() if v is not None}
        if not layer:
            continue
        sources.append(label or ("data.transform" if who == "config" else "model"))
        if "resize" in layer:
            values["crop_pct"], origin["crop_pct"] = None, who
        if "crop_pct" in layer:
            values["resize"], origin["resize"] = None, who
        if "input_size" in layer and "resize" not in layer and "crop_pct" not in layer and values["resize"]:
            # a new input size alone keeps the earlier resize's proportion to the input
            (oh, ow), (nh, nw) = values["input_size"], _pair(layer["input_size"])
            r = values["resize"]
            values["resize"] = (int(r[0] * nh / oh),) if len(r) == 1 else (int(r[0] * nh / oh), int(r[1] * nw / ow))
            origin["resize"] = who
        for k, v in layer.items():
            if k == "input_size":
                v = _pair(v)
            elif k == "resize":
                v = (int(v),) if isinstance(v, int) else tuple(int(x) for x in v)
            elif k == "normalize":
                v = (v != "none") if isinstance(v, str) else bool(v)
            elif k in ("mean", "std"):
                v = tuple(float(x) for x in v)
            values[k], origin[k] = v, who
    h, w = values["input_size"]
    resize = values["resize"]
    crop_pct = values.pop("crop_pct")
    if crop_pct is not None:
        if origin["crop_pct"] == "default":
            resize = (int(h * 256 / 224),) if h == w else (int(h * 256 / 224), int(w * 256 / 224))
        else:
            resize = (int(math.floor(h / crop_pct)),) if h == w else \
                (int(math.floor(h / crop_pct)), int(math.floor(w / crop_pct)))
        origin["resize"] = origin["crop_pct"]
        if origin["center_crop"] != "config":
            values["center_crop"] = True
    origin.pop("crop_pct", None)
    if resize is not None and len(resize) == 2 and tuple(resize) == (h, w) and origin["center_crop"] != "config":
        values["center_crop"] = False  # an exact resize to the input size needs no crop
    return Transform(input_size=(h, w), resize=resize, interpolation=values["interpolation"],
                     center_crop=bool(values["center_crop"]), mean=tuple(values["mean"]), std=tuple(values["std"]),
                     channels=values["channels"], normalize=bool(values["normalize"]),
                     source=" + ".join(sources) if sources else "default", origin=origin)

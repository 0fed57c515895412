"""Typed, validated configuration. Every key is documented in configs/default.yaml.

A config is loaded from YAML (safe_load), validated (an unknown key, a wrong type or a bad
value is a one-line error naming the key and the file), then CLI flags are merged on top:
a flag left unset (None) never overrides the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .batchrange import check_batch_range
from .errors import ConfigError, InputError, UsageError
from .methods.base import method_names
from .plaindata import check_plain  # (importing it runs methods/__init__, which registers every method)

OBSERVERS = ["MSEObserver", "EMAMSEObserver", "MinMaxObserver", "EMAMinMaxObserver",
             "EMAQuantileObserver", "ClipStdObserver", "KLDObserver"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class ModelConfig(_Section):
    # torchvision name (resnet18, ...), `embedded`, `package.module:factory`, or `file.py:factory`
    name: str = "embedded"
    # DEFAULT (torchvision's pretrained weights from the local torch cache), none (random
    # init), or a path to a state_dict file (.pt/.pth loaded with weights_only=True, or .safetensors)
    weights: str = "DEFAULT"
    # number of classes, for factories and torchvision models built without pretrained weights
    num_classes: Optional[int] = Field(default=None, gt=0)


class TransformConfig(_Section):
    """How file-backed data (idx:, imagefolder:, images:) becomes model inputs. Every key left
    null comes from the model's own preprocessing when it has one (torchvision weights, timm's
    pretrained config, a Hugging Face image processor), else from the source's default."""

    # side of the square model input, or [height, width]
    input_size: Optional[Union[int, List[int]]] = None
    # resize before cropping: the shorter side (an int) or an exact [height, width]
    resize: Optional[Union[int, List[int]]] = None
    # or give the resize as a fraction: shorter side = floor(input_size / crop_pct)
    crop_pct: Optional[float] = Field(default=None, gt=0, le=1)
    interpolation: Optional[Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]] = None
    center_crop: Optional[bool] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    # rgb (3 channels) or grayscale (1 channel)
    channels: Optional[Literal["rgb", "grayscale"]] = None
    # mean_std: (x - mean) / std on pixels in [0, 1]; none: the pixels in [0, 1] as they are
    normalize: Optional[Literal["mean_std", "none"]] = None

    @field_validator("input_size", "resize")
    @classmethod
    def _size(cls, v):
        if v is None:
            return v
        vals = [v] if isinstance(v, int) else v
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("must be one side or [height, width]")
        if any(int(x) <= 0 for x in vals):
            raise ValueError("sides must be positive")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v):
        if v is not None and (not v or any(x <= 0 for x in v)):
            raise ValueError("needs one positive value per channel (or one for all)")
        return v

    @field_validator("mean")
    @classmethod
    def _mean(cls, v):
        if v is not None and not v:
            raise ValueError("needs one value per channel (or one for all)")
        return v

    @model_validator(mode="after")
    def _one_resize(self):
        if self.resize is not None and self.crop_pct is not None:
            raise ValueError("give resize or crop_pct, not both")
        return self

    def explicit(self) -> Dict[str, Any]:
        """The keys set (not null)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DataConfig(_Section):
    # digits | idx:PATH | imagefolder:PATH | images:PATH | synthetic:CxHxW[:classes]
    dataset: str = "digits"
    bs: int = Field(default=64, gt=0)
    sb: int = Field(default=0, ge=0)
    eb: int = Field(default=15, ge=0)
    seed: int = 0
    calibration_size: int = Field(default=1024, gt=0)
    # which end of the seeded permutation the calibration images come from: tail (disjoint from
    # the sensitivity batches, which start at its head) or head (the release's: overlaps them)
    calibration_from: Literal["tail", "head"] = "tail"
    # false: a training split too small to hold the sensitivity batches and the calibration
    # images apart (calibration_from: tail) is an error naming the counts; true: they may
    # overlap (reported by `clado run`). calibration_from: head and eval_split: train ask for
    # their overlap themselves
    allow_overlap: bool = False
    # which split to evaluate on: test (digits/idx), val (imagefolder)
    eval_split: Literal["test", "val", "train"] = "test"
    # evaluate on at most this many images (None: all of the split)
    eval_size: Optional[int] = Field(default=None, gt=0)
    # side of the square input for imagefolder/images (Resize 256/224 * image_size) when
    # neither data.transform.input_size nor the model's preprocessing gives one
    image_size: int = Field(default=224, gt=0)
    workers: int = Field(default=0, ge=0)
    # preprocessing of file-backed data (idx:, imagefolder:, images:); see TransformConfig
    transform: TransformConfig = Field(default_factory=TransformConfig)

    @model_validator(mode="after")
    def _order(self):
        try:
            check_batch_range(self.sb, self.eb)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return self


class QuantizerConfig(_Section):
    observer: str = "MSEObserver"
    per_channel: bool = False
    symmetric: bool = True
    pot_scale: bool = False

    @field_validator("observer")
    @classmethod
    def _known_observer(cls, v: str) -> str:
        if v not in OBSERVERS:
            raise ValueError(f"unknown observer {v!r}; one of {', '.join(OBSERVERS)}")
        return v


class QuantConfig(_Section):
    backend: Literal["Academic"] = "Academic"
    weight_candidates: List[int] = Field(default_factory=lambda: [2, 4, 8])
    activation_bits: int = Field(default=8, ge=2, le=16)
    weight: QuantizerConfig = Field(default_factory=QuantizerConfig)
    activation: QuantizerConfig = Field(
        default_factory=lambda: QuantizerConfig(observer="EMAMSEObserver", symmetric=False))

    # (weight bits, activation bits) of every option of a decided layer, e.g. [[2, 8], [4, 8], [4, 4]];
    # replaces weight_candidates and activation_bits (null: their product, as before)
    options: Optional[List[List[int]]] = None
    # activation widths whose product with weight_candidates gives the options (null: activation_bits)
    activation_candidates: Optional[List[int]] = None

    @field_validator("options")
    @classmethod
    def _options(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("needs at least one [weight bits, activation bits] pair")
        for p in v:
            if len(p) != 2:
                raise ValueError(f"each option is a [weight bits, activation bits] pair, not {p}")
            if any(b < 2 or b > 16 for b in p):
                raise ValueError(f"option {p}: widths must lie in 2..16")
        pairs = [tuple(p) for p in v]
        dup = next((p for i, p in enumerate(pairs) if p in pairs[:i]), None)
        if dup is not None:
            raise ValueError(f"option {list(dup)} is given twice")
        return [list(p) for p in sorted(pairs)]

    @field_validator("activation_candidates")
    @classmethod
    def _act_candidates(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("needs at least one width")
        if any(b < 2 or b > 16 for b in v):
            raise ValueError("widths must lie in 2..16")
        if len(set(v)) != len(v):
            raise ValueError("widths must be distinct")
        return sorted(v)

    @model_validator(mode="after")
    def _one_option_source(self):
        if self.options is not None:
            if self.activation_candidates is not None:
                raise ValueError("give quant.options or quant.activation_candidates, not both")
            for key in ("weight_candidates", "activation_bits"):
                if key in self.model_fields_set:
                    raise ValueError(f"give quant.options or quant.{key}, not both (options fix both widths)")
        elif self.activation_candidates is not None and "activation_bits" in self.model_fields_set:
            raise ValueError("give quant.activation_candidates or quant.activation_bits, not both")
        return self

    def pairs(self) -> List[tuple]:
        """(weight bits, activation bits) of every option, sorted by weight then activation bits."""
        if self.options is not None:
            return [tuple(p) for p in self.options]
        acts = self.activation_candidates or [self.activation_bits]
        return sorted((w, a) for w in self.weight_candidates for a in acts)

    def weight_widths(self) -> List[int]:
        """The distinct weight widths of the options, ascending."""
        return sorted({w for w, _ in self.pairs()})

    def option_label(self, w: int, a: int) -> str:
        """How an option is written: `4` (weight bits) with one activation width, else `w4a8`."""
        return f"w{w}a{a}" if self.act_options else f"{w}"

    def act_widths(self) -> List[int]:
        return sorted({a for _, a in self.pairs()})

    @property
    def act_options(self) -> bool:
        """Whether the options differ in activation width (else every decided layer's input keeps
        one width and everything is as without options)."""
        return len(self.act_widths()) > 1

    def manifest_dump(self) -> Dict[str, Any]:
        """The settings as the cache manifest records them. Options with one activation width are
        recorded as the weight candidates and activation_bits they equal, and a config without
        options records exactly what it did before options existed, so its fingerprint stays."""
        d = self.model_dump(mode="json")
        d.pop("options")
        d.pop("activation_candidates")
        pairs = self.pairs()
        if not self.act_options:   # one activation width: the weight widths are distinct
            d["weight_candidates"], d["activation_bits"] = [w for w, _ in pairs], pairs[0][1]
            return d
        d.pop("weight_candidates")
        d.pop("activation_bits")
        d["options"] = [list(p) for p in pairs]
        return d

    @field_validator("weight_candidates")
    @classmethod
    def _candidates(cls, v: List[int]) -> List[int]:
        if not v:
            raise ValueError("needs at least one width")
        if any(b < 2 or b > 16 for b in v):
            # 1 bit: a symmetric 1-bit grid is {-1, 0}·scale, which maps every positive weight to 0
            raise ValueError("widths must lie in 2..16 (a symmetric 1-bit quantizer maps every positive weight to 0)")
        if len(set(v)) != len(v):
            raise ValueError("widths must be distinct")
        return sorted(v)


class LayersConfig(_Section):
    # decided layers: quantizable layers whose names match an include glob and no exclude glob
    include: List[str] = Field(default_factory=lambda: ["*"])
    exclude: List[str] = Field(default_factory=list)
    # keep the first quantizable layer and the last one (the classifier) out of the decision
    fix_first_last: bool = True
    # which are first and last: call_order (the first and last quantizable layer a forward
    # pass calls) or type (the first-called convolution and the last-called Linear)
    first_last_by: Literal["call_order", "type"] = "call_order"
    # extra layers to keep fixed (globs)
    fixed: List[str] = Field(default_factory=list)
    fixed_weight_bits: int = Field(default=8, ge=2, le=16)
    fixed_activation_bits: int = Field(default=8, ge=2, le=16)
    # Constraints of the program only (not of what prep measures: not in the cache fingerprint).
    # tie: groups of layer-name globs; every decided layer a group matches takes one width
    tie: List[List[str]] = Field(default_factory=list)
    # also tie decided layers that read the same input tensor (a ResNet block's conv1 and its
    # downsample conv: HAWQ-V3's ties), found by one forward pass of the example input
    tie_shared_input: bool = False
    # glob -> the candidate widths allowed for the decided layers it matches (a subset of
    # quant.weight_candidates); a layer matched by several globs takes the last matching entry's
    widths: Dict[str, List[int]] = Field(default_factory=dict)

    @field_validator("tie")
    @classmethod
    def _tie(cls, v: List[List[str]]) -> List[List[str]]:
        for i, group in enumerate(v):
            if not group:
                raise ValueError(f"[{i}] is empty: give one or more layer-name globs")
            if any(not g.strip() for g in group):
                raise ValueError(f"[{i}] holds an empty glob")
        return v

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: Dict[str, List[int]]) -> Dict[str, List[int]]:
        for glob, ws in v.items():
            if not glob.strip():
                raise ValueError("an empty glob")
            if not ws:
                raise ValueError(f"{glob!r}: allows no width (give one or more of quant.weight_candidates)")
            if len(set(ws)) != len(ws):
                raise ValueError(f"{glob!r}: widths must be distinct")
        return v


class PrepConfig(_Section):
    loss: Literal["ce", "kl"] = "ce"
    engine: Literal["fast", "reference"] = "fast"
    # CLADO fast engine: perturbations stacked into one forward pass; auto picks them per layer
    # and keeps the peak memory within 2x of the reference engine's (docs/performance.md)
    stack: Union[Literal["auto"], int] = "auto"
    # HAWQ trace estimator: per-layer probes, or all layers from the same probes
    hawq_estimator: Literal["per-layer", "all-layers"] = "per-layer"
    hawq_max_iter: int = Field(default=100, gt=0)
    hawq_tol: float = Field(default=1e-3, gt=0)

    @field_validator("stack", mode="before")
    @classmethod
    def _stack(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be auto or a positive integer, not {v!r}")


class OptimizeConfig(_Section):
    # exact: x'Gx itself (proven by HiGHS where it can; docs/solvers.md); clip: the release's
    # eigenvalue clipping (a different program); shift: exact through a convex shift
    psd: Literal["exact", "clip", "shift"] = "exact"
    solver: str = "auto"
    time_limit: float = Field(default=120.0, gt=0)
    # budgets for `clado run`: sizes with units (4MB, 800KB) or average bits (avg:4.5)
    budgets: List[str] = Field(default_factory=list)
    # bounds on other costs, for every decision: {bops: 1.5G, latency: 3.2, bops: rel:0.5}
    bounds: Dict[str, str] = Field(default_factory=dict)
    # user cost tables: name -> CSV file (layer,w_bits,value[,a_bits])
    costs: Dict[str, str] = Field(default_factory=dict)
    # `clado run`: keep the best measured of the K best distinct decisions per method and budget
    # (1: the program's optimum, no refinement)
    refine: int = Field(default=3, ge=1, le=50)

    @field_validator("bounds", mode="before")
    @classmethod
    def _bounds_text(cls, v):
        if isinstance(v, dict):
            return {k: (str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x) for k, x in v.items()}
        return v
    # any registered method (clado_cli.methods); default: all of them
    methods: List[str] = Field(default_factory=lambda: method_names())

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: List[str]) -> List[str]:
        known = method_names()
        for m in v:
            if m not in known:
                raise ValueError(f"unknown method {m!r}; one of {', '.join(known)}")
        return v


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    layers: LayersConfig = Field(default_factory=LayersConfig)
    prep: PrepConfig = Field(default_factory=PrepConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    cache_dir: str = ".clado-cache"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: Optional[int] = Field(default=None, gt=0)
    # where the config came from (not a key users set)
    source: Optional[str] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _widths_are_candidates(self):
        cands = self.quant.weight_candidates
        for glob, ws in self.layers.widths.items():
            bad = [b for b in ws if b not in cands]
            if bad:
                raise ValueError(f"layers.widths: {glob!r}: width {bad[0]} is not among quant.weight_candidates "
                                 f"({', '.join(map(str, cands))})")
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"source"})
        q = d["quant"]
        for key in ("options", "activation_candidates"):   # unset: as before these keys existed
            if q[key] is None:
                del q[key]
        # the keys they replace are left out, so that the dict loads back as a valid config
        for key in ("weight_candidates", "activation_bits") if "options" in q else \
                ("activation_bits",) if "activation_candidates" in q else ():
            del q[key]
        return d


def _format_validation_error(err: ValidationError, where: str, flags: Optional[Mapping[str, str]] = None) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if not e["loc"]:  # a check across sections: its message names the keys
        return f"{where}: {msg}"
    if flags and key in flags:  # the bad value came from a command-line flag: name the flag
        return f"{flags[key]}: {msg} (config key {key})"
    return f"{where}: {key}: {msg}"


def load_config(path: Optional[str | Path] = None, overrides: Optional[Mapping[str, Any]] = None,
                flags: Optional[Mapping[str, str]] = None, where: Optional[str] = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted overrides
    such as {"data.bs": 32}; None values in overrides are ignored.

    `flags` maps dotted keys to the command-line flag that set them (an error in such a value
    names the flag); `where` names the source of the overrides when there is no file."""
    raw: Dict[str, Any] = {}
    where = where or "defaults"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise InputError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a YAML text file (invalid UTF-8 at byte {exc.start})") from None
        except OSError as exc:
            raise InputError(f"cannot read config file {p}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except RecursionError:
            raise ConfigError(f"{p}: nested too deeply to read") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: YAML syntax error{at}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        raw = check_plain(loaded, str(p), ConfigError)
    check_plain(dict(overrides or {}), where, ConfigError)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {part} must be a mapping")
        node[parts[-1]] = value
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        given = {k: f for k, f in (flags or {}).items() if (overrides or {}).get(k) is not None}
        raise ConfigError(_format_validation_error(err, where, given)) from None
    cfg.source = where
    return cfg

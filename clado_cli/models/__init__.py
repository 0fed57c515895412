"""Models behind one factory: torchvision classifiers by name, `embedded`, `timm:NAME`,
`hf:PATH` (models/wild.py), and user factories (`package.module:factory` or
`path/to/file.py:factory`). `model_preprocessing(cfg)` gives the preprocessing a model carries.

`build_model(cfg, data)` returns the float model in eval mode. Weights are only ever loaded with
`torch.load(..., weights_only=True)` or from safetensors.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import InputError, UsageError
from ..registry import Registry, unknown_name_message
from .loading import _load_state_dict_file, _num_classes, read_state_dict  # noqa: F401  (re-exported)

# Model "kinds" that are not torchvision names.
MODELS: Registry[Callable] = Registry("model")


def torchvision_names():
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def is_factory_spec(name: str) -> bool:
    return ":" in name


@MODELS.register("embedded")
def _embedded(cfg: ModelConfig, data, log=None) -> nn.Module:
    from .embedded import load_or_train_embedded

    if data is None or data.spec != "digits":
        raise UsageError("the embedded model is trained on digits: set data.dataset to digits")
    x, y = (data.train.images, data.train.labels) if hasattr(data.train, "images") else _stack(data.train)
    model = load_or_train_embedded(x, y, log=log)
    if cfg.weights not in ("DEFAULT", "none"):
        _load_state_dict_file(model, cfg.weights)
    return model


def _stack(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def build_model(cfg: ModelConfig, data=None, log=None) -> nn.Module:
    from .wild import build_hf, build_timm

    name = cfg.name
    if name in MODELS:
        model = MODELS.get(name)(cfg, data, log)
    elif name.startswith("timm:"):
        model = build_timm(cfg, data, log)
    elif name.startswith("hf:"):
        model = build_hf(cfg, data, log)
    elif is_factory_spec(name):
        model = _from_factory(name, cfg)
        if cfg.weights not in ("DEFAULT", "none"):
            _load_state_dict_file(model, cfg.weights)
    else:
        model = _torchvision(name, cfg, data)
    model.eval()
    return model


def _torchvision(name: str, cfg: ModelConfig, data) -> nn.Module:
    import torchvision.models as tvm

    known = torchvision_names()
    if name not in known:
        raise UsageError(unknown_name_message("model", name, known + MODELS.names()))
    from .wild import torchvision_weights

    weights = torchvision_weights(name, cfg.weights)
    if weights is not None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not path.is_file():
            raise InputError(
                f"pretrained weights for {name} are not in the local torch cache: put "
                f"{Path(weights.url).name} (from {weights.url}) into {path.parent}/, or set "
                f"model.weights to a state_dict file or 'none'")
        _check_hub_hash(path)
        nc = len(weights.meta.get("categories") or []) or None
        model = tvm.get_model(name, weights=None, **({"num_classes": nc} if nc else {}))
        _load_state_dict_file(model, str(path))
        return model
    kwargs = {}
    nc = _num_classes(cfg, data)
    if nc:
        kwargs["num_classes"] = nc
    torch.manual_seed(0)  # 'none' means a seeded random init, so runs are repeatable
    model = tvm.get_model(name, weights=None, **kwargs)
    if cfg.weights != "none":
        if cfg.weights == "DEFAULT":
            raise UsageError(f"model {name} has no torchvision pretrained weights: set model.weights to a "
                             f"state_dict file or 'none'")
        _load_state_dict_file(model, cfg.weights)
    return model


def model_preprocessing(cfg: ModelConfig):
    """The preprocessing `cfg`'s model carries (data.transform keys plus `source`), or None."""
    from .wild import model_preprocessing as _mp

    return _mp(cfg)


def _check_hub_hash(path: Path) -> None:
    """torch.hub names a checkpoint `<name>-<first hex digits of its sha256>.<ext>` and checks that
    prefix when it downloads; check it again on every load, so a truncated or altered file in the
    local cache is refused instead of loaded."""
    from torch.hub import HASH_REGEX

    m = HASH_REGEX.search(path.name)
    if not m or not m.group(1):
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(m.group(1)):
        raise InputError(f"pretrained weights {path} fail their checksum (sha256 {h.hexdigest()[:len(m.group(1))]}, "
                         f"the file name says {m.group(1)}): the file is truncated or altered; delete it and "
                         f"put a fresh copy there")


def _from_factory(spec: str, cfg: ModelConfig) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UsageError(f"model factory {spec!r} must look like package.module:factory or file.py:factory")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise InputError(f"model file not found: {path}")
            mod_name = "clado_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
            spec_ = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            with _on_path(str(path.resolve().parent)):   # the file may import modules beside it
                spec_.loader.exec_module(module)
        else:
            with _on_path(str(Path.cwd())):   # as under `python -m`: modules of the working directory
                module = importlib.import_module(target)
    except (InputError, UsageError, KeyboardInterrupt):
        raise
    except BaseException as exc:   # SystemExit, GeneratorExit: user code that did not return is an error too
        raise InputError(f"cannot import model factory module {target!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UsageError(f"{target!r} has no callable {attr!r}")
    kwargs = {}
    if cfg.num_classes and "num_classes" in inspect.signature(fn).parameters:
        kwargs["num_classes"] = cfg.num_classes
    torch.manual_seed(0)  # a factory's own random init is seeded, so runs (and caches) repeat
    try:
        model = fn(**kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:   # SystemExit from a factory must not end clado with exit 0
        raise InputError(f"model factory {spec} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model factory {spec} returned {type(model).__name__}, not an nn.Module")
    return model


@contextmanager
def _on_path(folder: str):
    """`folder` at the front of sys.path while a user module is imported."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def canonical_name(name: str) -> str:
    """A model name as the cache records it: a `file.py:factory` with the file's resolved path,
    so `m.py`, `./m.py` and `/abs/m.py` name one cache."""
    target, sep, attr = name.rpartition(":")
    if sep and target.endswith(".py") and Path(target).is_file():
        return f"{Path(target).resolve()}:{attr}"
    return name


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16
                 else v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

"""data.transform: the source defaults are what clado always did, the model's own preprocessing
is the default when it has one (equal to torchvision's weights.transforms() and timm's
resolve_model_data_config + create_transform), explicit keys override it, and the resolved
transform is part of the fingerprint of file-backed data only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clado_cli.config import ModelConfig, load_config
from clado_cli.data import load_data, resolve_transform
from clado_cli.data.idx import MNIST_MEAN, MNIST_STD
from clado_cli.errors import ConfigError, UsageError
from clado_cli.models import model_preprocessing


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_idx_split(directory, prefix, images, labels):
    _write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
    _write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture
def idx_dir(tmp_path):
    g = np.random.default_rng(0)
    write_idx_split(tmp_path, "train", g.integers(0, 256, (40, 12, 10)), g.integers(0, 3, 40))
    write_idx_split(tmp_path, "t10k", g.integers(0, 256, (20, 12, 10)), g.integers(0, 3, 20))
    return tmp_path


def _pil(seed=0, size=(300, 240)):
    from PIL import Image

    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_defaults_are_what_clado_always_did(idx_dir):
    t = resolve_transform("imagefolder", 224)
    assert (t.input_size, t.resize, t.center_crop, t.interpolation) == ((224, 224), (256,), True, "bilinear")
    assert t.normalize and t.channels == "rgb" and t.source == "default"
    assert resolve_transform("images", 160).resize == (int(160 * 256 / 224),)
    from torchvision import transforms as T

    img = _pil()
    old = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
    assert torch.equal(t.pil()(img), old)
    d = load_data(f"idx:{idx_dir}")
    raw = np.frombuffer((idx_dir / "train-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).reshape(40, 12, 10)
    expected = ((torch.from_numpy(raw.astype(np.float32)) / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    assert torch.equal(d.train.images, expected)
    assert d.input_shape == (1, 12, 10) and d.transform.resize is None


def test_normalize_none_channels_and_size_on_idx(idx_dir):
    d = load_data(f"idx:{idx_dir}", transform={"normalize": "none"})
    assert d.train.images.min() >= 0 and d.train.images.max() <= 1 and d.train.images.max() > 0.9
    d = load_data(f"idx:{idx_dir}", transform={"channels": "rgb", "input_size": 16, "mean": [0.5], "std": [0.25]})
    assert d.input_shape == (3, 16, 16) and tuple(d.train.images.shape) == (40, 3, 16, 16)
    assert torch.equal(d.train.images[:, 0], d.train.images[:, 2])
    with pytest.raises(UsageError, match="mean has 2 values"):
        load_data(f"idx:{idx_dir}", transform={"mean": [0.5, 0.5]})


def test_transform_keys_are_validated_and_not_for_digits(tmp_path):
    with pytest.raises(ConfigError, match="data.transform.normalize"):
        load_config(None, {"data.transform.normalize": "off"})
    with pytest.raises(ConfigError, match="resize or crop_pct"):
        load_config(None, {"data.transform.resize": 256, "data.transform.crop_pct": 0.9})
    with pytest.raises(UsageError, match="not digits"):
        load_data("digits", transform={"normalize": "none"})
    cfg = load_config(None, {"data.transform.mean": [0, 0.5, 1], "data.transform.input_size": [32, 48]})
    assert cfg.data.transform.explicit() == {"mean": [0.0, 0.5, 1.0], "input_size": [32, 48]}


def test_torchvision_weights_transforms_are_the_default():
    import torchvision.models as tvm

    for weights, name in (("DEFAULT", "resnet18"), ("IMAGENET1K_V2", "resnet50"),
                          ("EfficientNet_B1_Weights.IMAGENET1K_V2", "efficientnet_b1")):
        pre = model_preprocessing(ModelConfig(name=name, weights=weights))
        t = resolve_transform("imagefolder", 224, None, pre)
        ref = tvm.get_weight(weights if "." in weights else f"{type(tvm.get_model_weights(name).DEFAULT).__name__}.{weights}"
                             ).transforms() if weights != "DEFAULT" else tvm.ResNet18_Weights.DEFAULT.transforms()
        assert list(t.resize) == list(ref.resize_size) and list(t.input_size) == list(ref.crop_size) * 2
        assert t.interpolation == ref.interpolation.value and list(t.mean) == list(ref.mean)
        img = _pil()
        assert torch.allclose(t.pil()(img), ref(img), atol=1e-5), name
    assert model_preprocessing(ModelConfig(name="resnet18", weights="none")) is None
    assert model_preprocessing(ModelConfig(name="embedded")) is None


def test_timm_pretrained_config_is_the_default():
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_model_data_config

    for name in ("resnet10t", "test_vit"):
        model = timm.create_model(name, pretrained=False)
        dc = resolve_model_data_config(model)
        t = resolve_transform("images", 224, None, model_preprocessing(ModelConfig(name=f"timm:{name}", weights="none")))
        assert (3, *t.input_size) == tuple(dc["input_size"])
        assert t.interpolation == dc["interpolation"] and t.mean == tuple(dc["mean"]) and t.std == tuple(dc["std"])
        img = _pil(1)
        assert torch.allclose(t.pil()(img), create_transform(**dc)(img), atol=1e-5), name


def test_explicit_keys_override_the_model():
    pre = model_preprocessing(ModelConfig(name="resnet18", weights="DEFAULT"))
    t = resolve_transform("imagefolder", 224, {"input_size": 64, "normalize": "none", "interpolation": "bicubic"}, pre)
    assert t.input_size == (64, 64) and not t.normalize and t.interpolation == "bicubic"
    assert t.resize == (73,)  # the model's resize keeps its proportion (256/224) to the input size
    assert t.origin["input_size"] == "config" and t.origin["mean"] == "model"
    t = resolve_transform("imagefolder", 224, {"input_size": 64, "crop_pct": 0.5}, pre)
    assert t.resize == (128,) and t.center_crop


TINY = """
import torch.nn as nn
def tiny(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def test_transform_is_in_the_fingerprint_of_file_data_only(tmp_path, idx_dir):
    from clado_cli.session import Session

    (tmp_path / "tiny.py").write_text(TINY)
    base = {"device": "cpu", "cache_dir": str(tmp_path / "c"), "model.name": f"{tmp_path}/tiny.py:tiny",
            "model.weights": "none",
            "data.dataset": f"idx:{idx_dir}", "data.transform.channels": "rgb", "data.transform.input_size": 32}
    a = Session(load_config(None, base))
    b = Session(load_config(None, {**base, "data.transform.normalize": "none"}))
    assert a.manifest["data"]["transform"]["input_size"] == [32, 32]
    assert a.fingerprint != b.fingerprint
    d = Session(load_config(None, {"device": "cpu", "cache_dir": str(tmp_path / "c")}))
    assert "transform" not in d.manifest["data"]  # digits: the fingerprint it always had


def test_large_idx_transforms_run_per_item_with_the_same_pixels(idx_dir, monkeypatch):
    from clado_cli.data import idx as idx_mod
    from clado_cli.data import sensitivity_batch

    tr = {"channels": "rgb", "input_size": 24, "resize": 26, "center_crop": True}
    eager = load_data(f"idx:{idx_dir}", transform=tr)
    monkeypatch.setattr(idx_mod, "EAGER_LIMIT", 1)
    lazy = load_data(f"idx:{idx_dir}", transform=tr)
    assert isinstance(lazy.train, idx_mod.TransformedArrays) and lazy.input_shape == (3, 24, 24)
    xa, ya = sensitivity_batch(eager.train, 1, 8, 0)
    xb, yb = sensitivity_batch(lazy.train, 1, 8, 0)
    assert torch.allclose(xa, xb, atol=1e-6) and torch.equal(ya, yb)

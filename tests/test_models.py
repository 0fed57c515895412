import sys
import textwrap

import pytest
import torch

from clado_cli.config import ModelConfig
from clado_cli.data import load_data
from clado_cli.errors import InputError, UsageError
from clado_cli.models import build_model, read_state_dict, torchvision_names, weights_hash


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_embedded_model_meets_its_accuracy(digits):
    model = build_model(ModelConfig(name="embedded"), digits)
    x, y = digits.eval.images, digits.eval.labels
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.97
    # cached: a second build gives the very same weights without retraining
    again = build_model(ModelConfig(name="embedded"), digits)
    assert weights_hash(again) == weights_hash(model)


def test_torchvision_by_name_random_init_is_seeded(digits):
    a = build_model(ModelConfig(name="resnet18", weights="none", num_classes=10), digits)
    b = build_model(ModelConfig(name="resnet18", weights="none", num_classes=10), digits)
    assert a.fc.out_features == 10 and weights_hash(a) == weights_hash(b)


def test_torchvision_default_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"not in the local torch cache: put resnet18-.*\.pth"):
        build_model(ModelConfig(name="resnet18", weights="DEFAULT"))


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(UsageError, match="resnet18"):
        build_model(ModelConfig(name="resnet81", weights="none"))
    assert "resnet50" in torchvision_names()


def test_state_dict_file_round_trip_and_bad_files(tmp_path, digits):
    src = build_model(ModelConfig(name="resnet18", weights="none", num_classes=10), digits)
    torch.manual_seed(3)
    for p in src.parameters():
        p.data.normal_()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    loaded = build_model(ModelConfig(name="resnet18", weights=str(path), num_classes=10), digits)
    assert weights_hash(loaded) == weights_hash(src)
    with pytest.raises(InputError, match="does not fit the model"):
        build_model(ModelConfig(name="resnet18", weights=str(path), num_classes=7), digits)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated or not a state_dict"):
        read_state_dict(str(truncated))
    pickled = tmp_path / "p.pt"
    torch.save({"model": src}, pickled)  # a whole module: only loadable with pickle
    with pytest.raises(InputError, match="needs pickle"):
        read_state_dict(str(pickled))


def test_factory_from_module_and_file(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class MyConv(nn.Conv2d):
            pass
        def small(num_classes=10):
            return nn.Sequential(MyConv(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4),
                                 nn.Flatten(), nn.Linear(4 * 4 * 4, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m1 = build_model(ModelConfig(name="mymodels:small", weights="none"))
    m2 = build_model(ModelConfig(name=f"{tmp_path / 'mymodels.py'}:small", weights="none", num_classes=3))
    assert m1[-1].out_features == 10 and m2[-1].out_features == 3
    with pytest.raises(UsageError, match="no callable"):
        build_model(ModelConfig(name="mymodels:nothing"))
    with pytest.raises(InputError, match="model file not found"):
        build_model(ModelConfig(name=f"{tmp_path / 'missing.py'}:small"))


def test_damaged_embedded_cache_is_retrained_not_trusted(digits, tmp_path, monkeypatch):
    from clado_cli.models.embedded import embedded_weights_path

    good = build_model(ModelConfig(name="embedded"), digits)
    monkeypatch.setenv("CLADO_HOME", str(tmp_path))
    path = embedded_weights_path()
    from clado_cli.models import embedded as emb

    # cache the good weights here (no retraining), then flip one byte of a weight

    monkeypatch.setattr(emb, "train_embedded", lambda *a, **k: good)
    build_model(ModelConfig(name="embedded"), digits)  # writes file + checksum here
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    calls = []
    monkeypatch.setattr(emb, "train_embedded", lambda *a, **k: calls.append(1) or good)
    build_model(ModelConfig(name="embedded"), digits)
    assert calls == [1]

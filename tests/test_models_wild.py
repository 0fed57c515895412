"""Models from the wild, end to end on small local data (no download anywhere):

- a model trained on pixels in [0, 1] recovers its float accuracy with `normalize: none` and
  loses it with the default normalization, and the sanity check says so with the numbers;
- a timm model (random init, saved by the test as a local directory with timm's config.json)
  and a tiny Hugging Face ViT (created and saved by the test with save_pretrained) run
  layers -> prep (clado, mpqco, hawq) -> optimize -> evaluate, with their own preprocessing;
- layers.first_last_by picks the fixed layers by call order or by type.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from clado_cli.config import LayersConfig, load_config
from clado_cli.quant.layers import plan_layers
from tests.conftest import small_overrides
from tests.data.test_transforms import write_idx_split

SMALL = {"data.bs": 8, "data.sb": 0, "data.eb": 0, "data.calibration_size": 16, "prep.hawq_max_iter": 5,
         "quant.weight_candidates": [4, 8], "optimize.time_limit": 30.0}

DIGITS_NET = """
import torch.nn as nn
def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, num_classes))
"""


@pytest.fixture(scope="module")
def unit_pixel_model(tmp_path_factory):
    """scikit-learn's digits as IDX files (uint8) and a small CNN trained on pixels in [0, 1]."""
    from clado_cli.data.digits import digits_arrays

    d = tmp_path_factory.mktemp("digits_idx")
    x_tr, y_tr, x_te, y_te = digits_arrays()
    to_u8 = lambda x: np.round(x[:, 0] * 255).astype(np.uint8)  # noqa: E731
    write_idx_split(d, "train", to_u8(x_tr), y_tr)
    write_idx_split(d, "t10k", to_u8(x_te), y_te)
    (d / "net.py").write_text(DIGITS_NET)
    ns: dict = {}
    exec(DIGITS_NET, ns)
    torch.manual_seed(0)
    model = ns["net"]()
    x = torch.from_numpy(to_u8(x_tr)).float().div(255).unsqueeze(1)
    y = torch.from_numpy(y_tr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    torch.save(model.eval().state_dict(), d / "net.pt")
    return d


def _session(tmp_path, **over):
    from clado_cli.session import Session

    messages = []
    cfg = load_config(None, {**small_overrides(tmp_path / "cache"), **SMALL, **over})
    return Session(cfg, log_fn=messages.append), messages


def test_unit_pixel_model_needs_normalize_none(unit_pixel_model, tmp_path):
    from clado_cli.evaluate import evaluate_uniform

    d = unit_pixel_model
    common = {"model.name": f"{d}/net.py:net", "model.weights": str(d / "net.pt"), "data.dataset": f"idx:{d}"}
    right, _ = _session(tmp_path, **common, **{"data.transform.normalize": "none"})
    wrong, said = _session(tmp_path, **common)
    r_rows = evaluate_uniform(right, [8, 8])
    assert r_rows[2].get("reused") and r_rows[2]["top1"] == r_rows[1]["top1"]  # the same model state: measured once
    w_rows = evaluate_uniform(wrong, [8])
    # digits are forgiving (Fashion-MNIST fell from 92% to 14% in issue 14); still a clear loss
    assert r_rows[0]["top1"] >= 0.9, r_rows[0]
    assert w_rows[0]["top1"] <= r_rows[0]["top1"] - 0.05, (w_rows[0], r_rows[0])
    assert r_rows[0]["warnings"] == []
    assert r_rows[0]["images_per_second"] > 0
    assert right.fingerprint != wrong.fingerprint


def test_sanity_warnings_name_the_numbers():
    from clado_cli.evaluate import sanity_warnings

    s = SimpleNamespace(data=SimpleNamespace(labeled=True, num_classes=10))
    rows = [{"kind": "float", "label": "float", "top1": 0.1398, "loss": 24.9, "samples": 10000},
            {"kind": "uniform", "label": "uniform 2-bit", "top1": 0.31, "loss": 3.1, "samples": 10000}]
    w = sanity_warnings(s, rows)
    assert len(w) == 2 and "13.98%" in w[0] and "near chance" in w[0] and "10.00%" in w[0]
    assert "uniform 2-bit top-1 31.00% beats the float model's 13.98%" in w[1]
    rows = [{**rows[0], "top1": 0.92}, {**rows[1], "top1": 0.915}]
    assert sanity_warnings(s, rows) == []
    s.data.spec = "synthetic:3x8x8"  # random labels: nothing to check
    assert sanity_warnings(s, [{**rows[0], "top1": 0.1}]) == []
    s.data.spec = "idx:/x"
    s.data.labeled = False  # pseudo-labels: float is right by definition
    assert sanity_warnings(s, [{**rows[0], "top1": 0.1}]) == []


def test_first_last_by_call_order_or_type():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)      # called first, not a convolution
            self.conv = nn.Conv2d(1, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 3)
            self.post = nn.Conv1d(1, 1, 1)   # called last, after the classifier
            self.pos = nn.Parameter(torch.zeros(1, 8, 8))

        def forward(self, x):
            x = self.proj(x + self.pos).unsqueeze(1) if x.dim() == 3 else x
            x = self.conv2(torch.relu(self.conv(x))).mean((2, 3))
            return self.post(self.fc(x).unsqueeze(1)).squeeze(1)

    m, ex = M().eval(), torch.zeros(1, 8, 8)
    by_order = plan_layers(m, ex, LayersConfig())
    assert [(l.name, l.reason) for l in by_order.fixed] == [("proj", "first layer"), ("post", "last layer (classifier)")]
    by_type = plan_layers(m, ex, LayersConfig(first_last_by="type"))
    assert [l.name for l in by_type.fixed] == ["conv", "fc"]
    assert "convolution" in by_type.fixed[0].reason and "Linear" in by_type.fixed[1].reason
    assert by_type.decided_names == ["proj", "conv2", "post"]
    skipped = {l.name: l.reason for l in by_type.skipped}
    assert "not a layer weight" in skipped["pos"]


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """A tiny ImageNet-layout folder: 3 classes of 24x20 PNGs, 8 train and 3 val images each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    g = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                a = g.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                a[..., c] = 255 - (i * 7) % 50  # a class-coloured channel
                Image.fromarray(a, "RGB").save(root / split / f"c{c}" / f"{i}.png")
    return root


def _run_all(tmp_path, session, messages, capfd=None):
    from clado_cli.layers_report import layers_report
    from clado_cli.pipeline import run_pipeline

    rep = layers_report(session)
    kinds = {l["kind"] for l in rep["layers"]}
    assert rep["counts"]["decided"] >= 3 and rep["transform"] is not None
    res = run_pipeline(session, tmp_path / "out", budgets=["avg:6"], methods=["clado", "mpqco", "hawq"], uniform=[8])
    rows = res["results"]
    engine = res["prep"]["clado"]["engine"]
    assert engine in ("fast", "reference")
    if capfd is not None and engine == "reference":  # the fast engine refused the model: clado says why
        err = capfd.readouterr().err
        assert "reference engine" in err, err
    assert [r["kind"] for r in rows][:2] == ["float", "uniform"]
    assert {r["method"] for r in rows if r["kind"] == "decision"} == {"clado", "mpqco", "hawq"}
    assert all(0 <= r["top1"] <= 1 and r["images_per_second"] > 0 for r in rows)
    decisions = sorted((tmp_path / "out" / "decisions").glob("decision-*.json"))
    assert len(decisions) == 3
    doc = json.loads(decisions[0].read_text())
    assert doc["cache"]["fingerprint"] == session.fingerprint
    return rep, kinds


def test_timm_model_from_a_local_directory(tmp_path, folder_data, capfd):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from clado_cli.models import model_preprocessing

    d = tmp_path / "timm_dir"
    d.mkdir()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    pcfg = {**model.pretrained_cfg, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_classes": 3}
    (d / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 3,
                                               "pretrained_cfg": pcfg}))
    s, said = _session(tmp_path, **{"model.name": "timm:test_resnet", "model.weights": str(d),
                                    "data.dataset": f"imagefolder:{folder_data}", "data.transform.input_size": 32})
    pre = model_preprocessing(s.cfg.model)
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["crop_pct"] == pcfg["crop_pct"]
    t = s.transform
    assert t["input_size"] == [32, 32] and t["mean"] == [0.5] * 3 and t["interpolation"] == pcfg["interpolation"]
    assert t["origin"]["input_size"] == "config" and t["origin"]["mean"] == "model"
    assert t["resize"] == [int(32 / pcfg["crop_pct"])]
    sd = s.float_model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    _run_all(tmp_path, s, said, capfd)


def test_hf_vit_from_a_local_directory(tmp_path, folder_data, capfd):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from clado_cli.cli import app
    from typer.testing import CliRunner

    d = tmp_path / "hf_vit"
    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 image_size=16, patch_size=8, num_labels=3)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).save_pretrained(str(d))
    proc = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
    proc.save_pretrained(str(d))
    s, said = _session(tmp_path, **{"model.name": f"hf:{d}", "model.weights": "DEFAULT",
                                    "data.dataset": f"imagefolder:{folder_data}"})
    t = s.data.transform
    assert t.input_size == (16, 16) and t.resize == (16, 16) and not t.center_crop and t.mean == (0.5, 0.5, 0.5)
    img = Image.open(next((folder_data / "val" / "c1").glob("*.png")))
    ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(t.pil()(img), ref, atol=2e-2)
    rep, kinds = _run_all(tmp_path, s, said, capfd)
    assert "Linear" in kinds and "Conv2d" in kinds
    skipped = {l["name"] for l in rep["layers"] if l["role"] == "skipped"}
    assert {"model.vit.embeddings.cls_token", "model.vit.embeddings.position_embeddings"} <= skipped
    r = CliRunner().invoke(app, ["layers", "--model", f"hf:{d}", "--data", f"imagefolder:{folder_data}",
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "preprocessing:" in r.output and "ViTImageProcessor" in r.output and "first and last by call_order" in r.output

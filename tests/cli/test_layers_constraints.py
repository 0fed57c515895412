"""`clado layers` with ties, per-layer widths and user cost tables: JSON, table, one-line errors."""
import json

import pytest
from typer.testing import CliRunner

from clado_cli.cli import app

runner = CliRunner()
SETUP = ["--model", "resnet18", "--weights", "none", "--data", "synthetic:3x32x32", "--device", "cpu", "-q"]


def layers(tmp_path, yaml_text="", *extra):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text or "{}\n")
    return runner.invoke(app, ["layers", "-c", str(cfg), *SETUP, *map(str, extra)], env={"COLUMNS": "220"})


def test_defaults_restrict_and_tie_nothing(tmp_path):
    res = layers(tmp_path, "", "--json")
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    decided = [l for l in rep["layers"] if l["role"] == "decided"]
    assert all(l["allowed_widths"] == [2, 4, 8] and l["tie"] is None for l in decided)
    assert rep["constraints"]["ties"] == [] and rep["constraints"]["restricted"] == 0 and rep["costs"] == {}
    table = layers(tmp_path).stdout
    assert "tie groups" not in table and "widths:" not in table


def test_ties_and_widths_in_json_and_table(tmp_path):
    text = ("layers:\n  tie_shared_input: true\n  tie: [[layer1.0.conv2, layer1.1.conv1], [layer4.1.conv2]]\n"
            "  widths: {'*.downsample.*': [4, 8], 'layer1.*': [2, 4]}\n")
    res = layers(tmp_path, text, "--json")
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    by = {l["name"]: l for l in rep["layers"]}
    assert [g["layers"] for g in rep["constraints"]["ties"]] == [
        ["layer1.0.conv2", "layer1.1.conv1"]] + [[f"layer{n}.0.conv1", f"layer{n}.0.downsample.0"] for n in (2, 3, 4)]
    assert [g["sources"] for g in rep["constraints"]["ties"]] == [["layers.tie[0]"]] + [["shared input"]] * 3
    assert by["layer3.0.conv1"]["tie"] == by["layer3.0.downsample.0"]["tie"] == 3
    assert by["layer1.1.conv2"]["allowed_widths"] == [2, 4] and by["layer2.0.conv2"]["allowed_widths"] == [2, 4, 8]
    assert by["layer2.0.conv1"]["allowed_widths"] == [4, 8]    # through its tie with the downsample conv
    assert "tie" not in by["conv1"] and "allowed_widths" not in by["fc"]
    assert rep["constraints"]["notes"] == ["layers.tie[1] matches one decided layer (layer4.1.conv2): it ties nothing"]
    out = layers(tmp_path, text).stdout
    assert "tie groups (every layer of a group takes one width):" in out
    assert "2: layer2.0.conv1, layer2.0.downsample.0 (shared input)" in out
    row = next(line for line in out.splitlines() if " layer2.0.downsample.0 " in line)
    assert "4,8" in row and "│   2 │" in row


@pytest.mark.parametrize("text,needle,code", [
    ("layers:\n  tie: [[layer1.*, nothing.here]]\n", "layers.tie[0]: 'nothing.here' matches no decided layer", 2),
    ("layers:\n  tie: [[conv1, fc]]\n", "layers.tie[0]: 'conv1' matches no decided layer", 2),   # fixed layers
    ("layers:\n  widths: {'nope*': [4]}\n", "layers.widths: 'nope*' matches no decided layer", 2),
    ("layers:\n  widths: {'layer1.*': [3]}\n", "layers.widths: 'layer1.*': width 3 is not among quant.weight_candidates", 2),
    ("layers:\n  widths: {'layer1.*': []}\n", "allows no width", 2),
    ("layers:\n  tie: [[]]\n", "layers.tie: [0] is empty", 2),
    ("layers:\n  tie_shared_input: true\n  widths: {layer2.0.conv1: [2], layer2.0.downsample.0: [8]}\n",
     "tie group 1 (layer2.0.conv1 [2], layer2.0.downsample.0 [8]) has no width every layer allows", 2),
])
def test_bad_constraints_are_one_line_errors(tmp_path, text, needle, code):
    res = layers(tmp_path, text)
    assert res.exit_code == code, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], res.stderr


def _cost_file(tmp_path, skip=None, extra=""):
    import torch.nn as nn
    import torchvision

    m = torchvision.models.resnet18(weights=None)
    rows = [f"{n},{b},{m.get_submodule(n).weight.numel() * b * 1e-6}" for n, x in m.named_modules()
            if isinstance(x, (nn.Conv2d, nn.Linear)) for b in (2, 4, 8) if (n, b) != skip]
    p = tmp_path / "lat.csv"
    p.write_text("layer,w_bits,value\n" + "\n".join(rows) + "\n" + extra)
    return p


def test_cost_tables_through_layers(tmp_path):
    p = _cost_file(tmp_path)
    rep = json.loads(layers(tmp_path, "", "--cost", f"latency={p}", "--json").stdout)
    by = {l["name"]: l for l in rep["layers"]}
    assert by["layer1.0.conv1"]["costs"]["latency"] == pytest.approx({"2": 0.073728, "4": 0.147456, "8": 0.294912})
    assert rep["costs"]["latency"]["file"] == str(p) and rep["costs"]["latency"]["has_a_bits"] is False
    assert rep["costs"]["latency"]["uniform"]["8"] == pytest.approx(
        sum(l["costs"]["latency"]["8"] for l in rep["layers"] if l["role"] == "decided"))
    assert "cost latency (" in layers(tmp_path, "", "--cost", f"latency={p}").stdout


@pytest.mark.parametrize("make,needle,code", [
    (lambda d: ["--cost", "latency"], "--cost 'latency': give NAME=FILE", 2),
    (lambda d: ["--cost", "bops=x.csv"], "cost name 'bops' is a built-in cost", 2),
    (lambda d: ["--cost", "Lat=x.csv"], "cost name 'Lat': use lower-case letters", 2),
    (lambda d: ["--cost", f"a={_cost_file(d)}", "--cost", f"a={_cost_file(d)}"], "--cost 'a' given more than once", 2),
    (lambda d: ["--cost", f"latency={d / 'none.csv'}"], "none.csv): file not found", 3),
    (lambda d: ["--cost", f"latency={_cost_file(d, skip=('layer2.0.conv2', 4))}"],
     "1 (layer, w_bits) entry missing: layer2.0.conv2@4", 3),
    (lambda d: ["--cost", f"latency={_cost_file(d, extra='layer9.conv,2,1' + chr(10))}"], "1 unknown layer layer9.conv", 3),
    (lambda d: ["--cost", f"latency={_cost_file(d, extra='fc,16,-0.5' + chr(10))}"], "value -0.5 is negative", 3),
])
def test_bad_cost_tables_through_the_cli(tmp_path, make, needle, code):
    res = layers(tmp_path, "", *make(tmp_path))
    assert res.exit_code == code, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], res.stderr

"""Issue 19 through the command line: `clado export` in each format with its size report,
`clado evaluate model.onnx` beside `clado evaluate decision.json`, and one-line errors."""
import json

import pytest
from typer.testing import CliRunner

from clado_cli.cli import app

from .conftest import mixed_decision
from .test_export_onnx import FFT_NET

runner = CliRunner()


def invoke(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, f"exit {res.exit_code}: {res.stderr}\n{res.stdout}"
    return res


@pytest.fixture(scope="module")
def decision_file(mixed, tmp_path_factory):
    _, d = mixed
    p = tmp_path_factory.mktemp("cli_export") / "decision-clado-test.json"
    p.write_text(json.dumps(d))
    return p


def test_export_help_has_an_example():
    res = invoke("export", "--help")
    assert "Example" in res.stdout and "onnx" in res.stdout


def test_export_onnx_then_evaluate_it_like_the_decision(decision_file, tmp_path):
    out = tmp_path / "model.onnx"
    rep = json.loads(invoke("export", decision_file, "--format", "onnx", "--out", out, "--json", "-q").stdout)
    assert out.is_file() and rep["path"] == str(out) and rep["file_bytes"] == out.stat().st_size
    d = json.loads(decision_file.read_text())
    assert rep["budget_bytes"] == d["budget"]["bytes"] and rep["decision_total_bytes"] == d["sizes"]["total_bytes"]
    assert rep["packed_weight_bytes"] >= rep["weight_bytes_at_width"] > 0
    a = json.loads(invoke("evaluate", decision_file, "--json", "-q").stdout)["results"][0]
    b = json.loads(invoke("evaluate", out, "--json", "-q").stdout)["results"][0]
    assert b["kind"] == "onnx" and b["samples"] == a["samples"]
    assert abs(a["top1"] - b["top1"]) * a["samples"] <= a["samples"] // 1000
    assert b["sizes"] == a["sizes"] and b["file_bytes"] == out.stat().st_size
    table = invoke("evaluate", out, decision_file).stdout
    assert "onnx clado @ test" in table and "clado @ test" in table


def test_export_weights_and_encodings_human_output(decision_file, tmp_path):
    res = invoke("export", decision_file, "--format", "weights", "--out", tmp_path / "w.safetensors")
    assert "packed weights" in res.stdout and "file on disk" in res.stdout and "budget" in res.stdout
    assert (tmp_path / "w.safetensors").is_file() and (tmp_path / "w.encodings.json").is_file()
    invoke("export", decision_file, "--format", "encodings", "-q")     # default: beside the decision
    assert decision_file.with_name("decision-clado-test.encodings.json").is_file()


def test_export_errors_are_one_line(decision_file, small_cfg, tmp_path):
    res = invoke("export", decision_file, "--format", "tflite", "--out", tmp_path / "x", code=2)
    assert res.stderr.startswith("Error: --format 'tflite'") and res.stderr.count("\n") == 1
    # a model torch.onnx cannot express: exit 3, the operator named, no file
    from clado_cli.session import Session

    src = tmp_path / "fftnet.py"
    src.write_text(FFT_NET)
    s = Session(small_cfg(**{"model.name": f"{src}:make", "model.weights": "none",
                             "data.dataset": "synthetic:1x8x8", "data.calibration_size": 32}))
    dfile = tmp_path / "fft.json"
    dfile.write_text(json.dumps(mixed_decision(s)))
    out = tmp_path / "out" / "fft.onnx"
    res = invoke("export", dfile, "--out", out, "-q", code=2)   # a decision naming a factory: not run
    assert "names the factory" in res.stderr and not out.exists()
    res = invoke("export", dfile, "--out", out, "--model", f"{src}:make", "--cache-dir", s.cfg.cache_dir, "-q", code=3)
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1 and res.stdout == ""
    assert "aten::fft_rfft2" in res.stderr
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])
    res = invoke("evaluate", tmp_path / "missing.onnx", code=3)
    assert res.stderr.startswith("Error: ONNX file not found")


@pytest.mark.slow
def test_run_exports_every_decision(tmp_path):
    """`clado run --export DIR`: each decision of the sweep as ONNX and encodings."""
    cfg = tmp_path / "small.yaml"
    cfg.write_text(f"""
data: {{dataset: digits, bs: 16, sb: 0, eb: 0, calibration_size: 64, eval_size: 64}}
optimize: {{budgets: ["avg:3"], methods: [naive], time_limit: 30}}
quant: {{weight_candidates: [2, 4, 8]}}
cache_dir: {tmp_path / 'cache'}
device: cpu
""")
    res = json.loads(invoke("run", "-c", cfg, "--out-dir", tmp_path / "run", "--export", tmp_path / "exp",
                            "--json", "-q").stdout)
    files = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert files == ["decision-naive-avg3.encodings.json", "decision-naive-avg3.onnx"]
    assert [e["format"] for e in res["exports"]] == ["onnx", "encodings"]
    row = [r for r in res["results"] if r.get("kind") == "decision"][0]
    b = json.loads(invoke("evaluate", tmp_path / "exp" / "decision-naive-avg3.onnx", "--json", "-q").stdout)
    assert abs(b["results"][0]["top1"] - row["top1"]) * row["samples"] <= row["samples"] // 1000

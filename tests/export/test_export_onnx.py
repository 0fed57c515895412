"""Issue 19: the ONNX QDQ export of a mixed 2/4/8-bit decision of the embedded model runs in ONNX
Runtime with clado's numbers, stores integer weights only, and carries the decision."""
import json

import numpy as np
import pytest
import torch

TOL = 1e-4   # max abs logit difference, relative to the largest |logit|, on images with no rounding flip


def test_onnx_runtime_computes_clados_fake_quant_model(mixed, embedded_onnx, compare_onnx):
    s, d = mixed
    path, _ = embedded_onnx
    x = s.data.eval.images
    c = compare_onnx(s, d, path, x)
    ref, ort_out, flipped = c["ref"], c["ort"], c["flipped"]
    scale = float(ref.abs().max())
    per_image = (ort_out - ref).abs().max(dim=1).values / scale
    # images where every activation integer agrees: float reassociation only (measured ~2e-7)
    assert bool((~flipped).any())
    assert float(per_image[~flipped].max()) <= TOL
    # everything beyond the bound is a one-step rounding flip, on a few images
    assert c["first_flip_steps"] <= 1
    assert bool(flipped[per_image > TOL].all())
    assert int(flipped.sum()) <= 0.05 * len(x)
    # top-1 agrees on all but at most one image in a thousand
    mismatched = int((ort_out.argmax(1) != ref.argmax(1)).sum())
    assert mismatched <= len(x) // 1000


def test_onnx_passes_the_checker_and_stores_integer_weights(mixed, embedded_onnx):
    import onnx
    from onnx import numpy_helper

    from clado_cli.export import quantizer_specs
    from clado_cli.export.quantizers import dequantized_weight, integer_weight

    s, d = mixed
    path, rep = embedded_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 21
    inits = {t.name: t for t in model.graph.initializer}
    specs = quantizer_specs(s.qmodel, d)
    weight_specs = [sp for sp in specs if sp.tensor == "weight"]
    assert {sp.bits for sp in weight_specs if sp.role == "decided"} == {2, 4, 8}
    for sp in weight_specs:
        t = inits[f"{sp.layer}.weight_quantized"]
        want = onnx.TensorProto.INT4 if sp.bits <= 4 else onnx.TensorProto.INT8
        assert t.data_type == want, sp.layer
        q = numpy_helper.to_array(t).astype(np.int64)
        assert q.min() >= sp.qmin and q.max() <= sp.qmax
        np.testing.assert_array_equal(q, integer_weight(sp, dequantized_weight(s.qmodel, sp.layer, sp.bits)).numpy())
        # never as float: no float initializer of the layer's weight shape is left
        assert not any(n.endswith(".weight") and n.startswith(sp.layer + ".") and
                       inits[n].data_type == onnx.TensorProto.FLOAT and list(inits[n].dims) == sp.shape
                       for n in inits), sp.layer
    ops = [n.op_type for n in model.graph.node]
    n_layers = len(weight_specs)
    assert ops.count("QuantizeLinear") == n_layers               # one per quantized input
    assert ops.count("DequantizeLinear") == 2 * n_layers         # weights and inputs
    assert "Clip" not in ops                                     # 8-bit inputs: UINT8's range is exact
    assert not any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    # sizes: packed integers (2-bit stored in INT4) beside the decision's budgeted bytes
    assert rep["packed_weight_bytes"] >= rep["weight_bytes_at_width"] == pytest.approx(d["sizes"]["total_bytes"])
    assert rep["file_bytes"] == path.stat().st_size
    float_bytes = 4 * sum(l.numel for l in s.plan.decided + s.plan.fixed)
    assert rep["packed_weight_bytes"] < rep["file_bytes"] < 0.3 * float_bytes


def test_onnx_metadata_records_the_decision(mixed, embedded_onnx):
    from clado_cli import __version__
    from clado_cli.export import decision_of_onnx, read_metadata

    s, d = mixed
    path, _ = embedded_onnx
    meta = read_metadata(path)
    assert meta["clado.method"] == "clado"
    assert json.loads(meta["clado.budget"]) == d["budget"]
    assert meta["clado.version"] == __version__
    assert meta["clado.fingerprint"] == s.fingerprint
    widths = json.loads(meta["clado.widths"])
    for name, spec in d["layers"].items():
        assert widths[name] == {"role": "decided", "w_bits": spec["w_bits"], "a_bits": spec["a_bits"]}
    for name in s.plan.fixed_names:
        assert widths[name]["role"] == "fixed" and widths[name]["w_bits"] == s.cfg.layers.fixed_weight_bits
    assert decision_of_onnx(path) == d


def test_evaluate_onnx_equals_evaluate_decision(mixed, embedded_onnx):
    from clado_cli.evaluate import evaluate_decision
    from clado_cli.export import evaluate_onnx

    s, d = mixed
    path, _ = embedded_onnx
    a = evaluate_decision(s, d)
    b = evaluate_onnx(s, path)
    assert b["samples"] == a["samples"]
    assert abs(b["top1"] - a["top1"]) * b["samples"] <= b["samples"] // 1000
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    assert b["sizes"] == a["sizes"] and b["kind"] == "onnx"


def test_narrow_activations_and_per_channel_weights(small_cfg, compare_onnx, tmp_path):
    """2-bit inputs sit in UINT4 behind a Clip at the dequantized range; per-channel asymmetric
    weights carry one scale and zero point per output channel (axis 0), in UINT4/UINT8."""
    import onnx

    from clado_cli.export import export_decision
    from clado_cli.session import Session

    from .conftest import mixed_decision

    s = Session(small_cfg(**{"quant.activation_bits": 2, "quant.weight.per_channel": True,
                             "quant.weight.symmetric": False}))
    d = mixed_decision(s)
    path = tmp_path / "narrow.onnx"
    export_decision(s, d, "onnx", path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    name = s.plan.decided_names[0]
    assert inits[f"{name}.input_zero_point"].data_type == onnx.TensorProto.UINT4
    assert list(inits[f"{name}.weight_scale"].dims) == [s.plan.decided[0].shape[0]]
    for layer, spec in d["layers"].items():
        want = onnx.TensorProto.UINT4 if spec["w_bits"] <= 4 else onnx.TensorProto.UINT8
        assert inits[f"{layer}.weight_quantized"].data_type == want
        assert inits[f"{layer}.weight_zero_point"].data_type == want
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == len(s.plan.decided)    # 2-bit inputs clipped; fixed layers' 8-bit inputs not
    c = compare_onnx(s, d, path, s.data.eval.images[:200])
    per_image = (c["ort"] - c["ref"]).abs().max(dim=1).values / float(c["ref"].abs().max())
    assert float(per_image[~c["flipped"]].max()) <= TOL
    assert c["first_flip_steps"] <= 1


def test_an_unexportable_model_is_one_line_naming_the_op_and_leaves_no_file(small_cfg, tmp_path):
    from clado_cli.export import ExportError, export_decision
    from clado_cli.session import Session

    from .conftest import mixed_decision

    src = tmp_path / "fftnet.py"
    src.write_text(FFT_NET)
    s = Session(small_cfg(**{"model.name": f"{src}:make", "model.weights": "none",
                             "data.dataset": "synthetic:1x8x8", "data.calibration_size": 32}))
    d = mixed_decision(s)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExportError, match=r"cannot express the operator aten::fft_rfft2") as e:
        export_decision(s, d, "onnx", out_dir / "m.onnx")
    assert "\n" not in str(e.value)
    assert list(out_dir.iterdir()) == []


FFT_NET = '''
import torch
import torch.nn as nn


class FFTNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = torch.fft.rfft2(x).abs()
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def make(num_classes=10):
    torch.manual_seed(0)   # the same weights in every process (the cache fingerprint hashes them)
    return FFTNet(num_classes or 10)
'''


@pytest.mark.parametrize("bad", ["nope"])
def test_unknown_format_is_a_usage_error(mixed, tmp_path, bad):
    from clado_cli.errors import UsageError
    from clado_cli.export import export_decision

    s, d = mixed
    with pytest.raises(UsageError, match="one of onnx, encodings, weights"):
        export_decision(s, d, bad, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_torch_is_untouched_by_export(mixed, embedded_onnx):
    s, d = mixed
    # the export left the session's QuantModel in float mode and the float model unchanged
    assert all(q.w_bits is None and not q.a_on for q in s.qmodel.qlayers.values())
    assert all(p.dtype == torch.float32 for p in s.float_model.parameters())

"""Issue 19 on a torchvision model: resnet18 (random init, no download) on 32x32 synthetic
images, a mixed 2/4/8-bit decision, exported to ONNX and run in ONNX Runtime."""
TOL = 1e-4


def test_resnet18_onnx_equals_clados_fake_quant_model(tmp_path, compare_onnx):
    import onnx

    from clado_cli.config import load_config
    from clado_cli.export import evaluate_onnx, export_decision
    from clado_cli.evaluate import evaluate_decision
    from clado_cli.session import Session

    from ..conftest import small_overrides
    from .conftest import mixed_decision

    # MinMax observers: MSE's search over 11M weights would take a minute on a laptop CPU
    cfg = load_config(None, small_overrides(tmp_path / "cache", **{
        "model.name": "resnet18", "model.weights": "none", "data.dataset": "synthetic:3x32x32",
        "data.calibration_size": 32, "quant.weight.observer": "MinMaxObserver",
        "quant.activation.observer": "EMAMinMaxObserver"}))
    s = Session(cfg)
    d = mixed_decision(s)
    path = tmp_path / "resnet18.onnx"
    rep = export_decision(s, d, "onnx", path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert rep["layers"] == 21 and rep["file_bytes"] < 0.2 * 4 * 11.2e6
    c = compare_onnx(s, d, path, s.data.eval.images)
    scale = float(c["ref"].abs().max())
    per_image = (c["ort"] - c["ref"]).abs().max(dim=1).values / scale
    assert float(per_image[~c["flipped"]].max()) <= TOL
    assert c["first_flip_steps"] <= 1 and bool(c["flipped"][per_image > TOL].all())
    n = len(per_image)
    assert int((c["ort"].argmax(1) != c["ref"].argmax(1)).sum()) <= n // 1000
    a, b = evaluate_decision(s, d), evaluate_onnx(s, path)
    assert abs(a["top1"] - b["top1"]) * n <= n // 1000

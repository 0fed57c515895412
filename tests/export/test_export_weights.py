"""Issue 19: the encodings JSON (every quantizer, schema-valid, exact scales) and the dequantized
weights with load_quantized, whose module is clado's fake-quant model bit for bit."""
import json

import pytest
import torch

from clado_cli.errors import InputError


@pytest.fixture(scope="module")
def weights_export(mixed, tmp_path_factory):
    from clado_cli.export import export_decision

    s, d = mixed
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    return path, export_decision(s, d, "weights", path)


def test_encodings_list_every_quantizer_exactly(mixed, tmp_path):
    from clado_cli.export import ENCODINGS_VERSION, export_decision, read_encodings

    s, d = mixed
    path = tmp_path / "m.encodings.json"
    rep = export_decision(s, d, "encodings", path)
    doc, specs = read_encodings(path)
    assert doc["version"] == ENCODINGS_VERSION == "clado.encodings/1"
    assert doc["decision"]["fingerprint"] == s.fingerprint and doc["decision"]["method"] == "clado"
    qm = s.qmodel
    layers = s.plan.decided_names + s.plan.fixed_names
    assert len(specs) == rep["quantizers"] == 2 * len(layers)
    assert {(sp.layer, sp.tensor) for sp in specs} == {(n, t) for n in layers for t in ("weight", "input")}
    for sp in specs:
        q = qm.qlayers[sp.layer]
        bits = d["layers"][sp.layer]["w_bits"] if sp.role == "decided" else s.cfg.layers.fixed_weight_bits
        fq = q.w_fq[str(bits)] if sp.tensor == "weight" else q.a_fq
        assert sp.bits == (bits if sp.tensor == "weight" else 8)
        assert (sp.qmin, sp.qmax) == (fq.quant_min, fq.quant_max)
        # the JSON numbers give back clado's float32 scales and zero points exactly
        assert torch.equal(torch.tensor(sp.scale, dtype=torch.float32), fq.scale.reshape(-1).cpu())
        assert sp.zero_point == [int(v) for v in fq.zero_point.reshape(-1)]
        assert sp.symmetric == (sp.tensor == "weight") and sp.axis is None
    raw = json.loads(path.read_text())
    q0 = raw["quantizers"][0]
    assert {"layer", "tensor", "bits", "scale", "zero_point", "symmetric", "axis", "qmin", "qmax", "dtype"} <= set(q0)


def test_encodings_schema_refuses_a_broken_file(tmp_path):
    from clado_cli.export import read_encodings

    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"version": "clado.encodings/1", "clado_version": "x",
                             "decision": {"method": "clado", "budget": {"given": "1", "bytes": 1}, "fingerprint": "f"},
                             "quantizers": [{"layer": "a", "tensor": "bias"}]}))
    with pytest.raises(InputError, match="not a valid clado encodings file: quantizers/0"):
        read_encodings(p)


def test_the_weights_round_trip_is_bit_exact(mixed, weights_export):
    from safetensors.torch import load_file

    from clado_cli.export import encodings_path_for, load_quantized
    from clado_cli.models import build_model

    s, d = mixed
    path, rep = weights_export
    enc = encodings_path_for(path)
    assert enc.name == "model.encodings.json" and rep["files"] == [str(path), str(enc)]
    state = load_file(str(path))
    qm = s.qmodel
    for name, spec in d["layers"].items():
        assert torch.equal(state[f"{name}.weight"], qm.qlayers[name].quantized_weight(spec["w_bits"]).cpu())
    # a freshly built model of the same architecture (its own weights) plus the two files
    fresh = build_model(s.cfg.model, s.data)
    with torch.no_grad():
        for v in fresh.state_dict().values():
            v.zero_()                     # every number must come from the files
    module = load_quantized(fresh, path)
    x = s.data.eval.images
    qm.set_decision({n: v["w_bits"] for n, v in d["layers"].items()})
    try:
        with torch.no_grad():
            ref = qm(x)
    finally:
        qm.reset()
    with torch.no_grad():
        got = module(x)
    assert torch.equal(got, ref)


def test_load_quantized_refuses_mismatches(mixed, weights_export, tmp_path):
    import torch.nn as nn

    from clado_cli.export import load_quantized

    s, _ = mixed
    path, _ = weights_export
    with pytest.raises(InputError, match="which the model does not have"):
        load_quantized(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(InputError, match="encodings file not found"):
        load_quantized(s.float_model, path, tmp_path / "none.json")
    with pytest.raises(InputError, match="weights file not found"):
        load_quantized(s.float_model, tmp_path / "none.safetensors")

"""Fixtures of the export tests: schema-valid mixed 2/4/8-bit decisions, one ONNX export of the
embedded model per test session, and the comparison of ONNX Runtime against clado's fake-quant
model that tells rounding flips from real differences."""
from __future__ import annotations

import pytest
import torch

from clado_cli import __version__
from clado_cli.decisions import SCHEMA_ID, validate_decision
from clado_cli.evaluate import sizes_for


def mixed_decision(session, cycle=(2, 4, 8), method="clado"):
    """A decision as make_decision writes it, decided layers cycling through `cycle` bits."""
    names = session.plan.decided_names
    bits = {n: cycle[i % len(cycle)] for i, n in enumerate(names)}
    sizes = sizes_for(session, bits)
    cfg = session.cfg
    d = {"schema": SCHEMA_ID, "method": method, "psd": "clip" if method == "clado" else None,
         "budget": {"given": "test", "bytes": int(sizes["decided_bytes"]) + 1},
         "layers": {n: {"w_bits": b, "a_bits": cfg.quant.activation_bits} for n, b in bits.items()},
         "fixed_layers": {n: {"w_bits": cfg.layers.fixed_weight_bits, "a_bits": cfg.layers.fixed_activation_bits}
                          for n in session.plan.fixed_names},
         "sizes": sizes, "predicted_loss_increase": 0.0,
         "solver": {"solver": "test", "status": "optimal", "optimal": True, "objective": 0.0, "seconds": 0.0},
         "warnings": [], "cache": {"fingerprint": session.fingerprint, "batches": [0], "samples": 16},
         "model": {"name": cfg.model.name, "weights_sha256": session.weights_hash},
         "clado_version": __version__, "config": cfg.to_dict()}
    return validate_decision(d)


@pytest.fixture(scope="session")
def mixed(shared_session):
    return shared_session, mixed_decision(shared_session)


@pytest.fixture(scope="session")
def embedded_onnx(mixed, tmp_path_factory):
    from clado_cli.export import export_decision

    s, d = mixed
    path = tmp_path_factory.mktemp("onnx") / "embedded.onnx"
    return path, export_decision(s, d, "onnx", path)


def fake_quant_logits(session, decision, x):
    from clado_cli.decisions import option_keys

    qm = session.qmodel
    qm.set_decision(option_keys(decision, qm.act_options))
    try:
        with torch.no_grad():
            return qm(x.to(session.device)).cpu()
    finally:
        qm.reset()


def compare(session, decision, path, x):
    """ONNX Runtime's logits beside clado's, and per image whether any activation integer
    differs (a rounding flip: the float input of a quantizer landed on the other side of a
    rounding boundary because ORT's float convolution sums in another order)."""
    import onnx
    import onnxruntime as ort

    from clado_cli.export import quantized_module
    from clado_cli.export.module import quantized_layers

    ref = fake_quant_logits(session, decision, x)
    module = quantized_module(session, decision)
    ints = {}

    def hook(mod, inp):
        fq = torch.fake_quantize_per_tensor_affine(inp[0], mod.scale, mod.zero_point, mod.qmin, mod.qmax)
        ints[mod.name] = (torch.round(fq / mod.scale) + mod.zero_point).to(torch.int64), mod

    for q in quantized_layers(module).values():
        q.register_forward_pre_hook(hook)
    with torch.no_grad():
        mod_logits = module(x)
    assert torch.equal(mod_logits, ref)          # the exported module is clado's model, bit for bit
    model = onnx.load(str(path))
    # the dequantized inputs (ORT cannot hand 4-bit tensors to numpy; the float values are exact)
    qouts = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and "/input/" in n.name]
    for o in qouts:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(o))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    res = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})
    # in graph order: where an image's integers first differ, they differ by one step (a rounding
    # flip); downstream of it the difference propagates and may grow
    flipped = torch.zeros(len(x), dtype=torch.bool)
    steps = 0
    names = [n.name.split("/input/")[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and "/input/" in n.name]
    for layer, r in zip(names, res[1:]):
        q, mod = ints[layer]
        r_int = (torch.round(torch.from_numpy(r) / mod.scale) + mod.zero_point).to(torch.int64)
        diff = (q - r_int).reshape(len(x), -1)
        first = ~flipped & (diff != 0).any(1)
        if bool(first.any()):
            steps = max(steps, int(diff[first].abs().max()))
        flipped |= first
    return {"ref": ref, "ort": torch.from_numpy(res[0]), "flipped": flipped, "first_flip_steps": steps}


@pytest.fixture(scope="session")
def compare_onnx():
    return compare

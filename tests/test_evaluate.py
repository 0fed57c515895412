"""Issue 5: evaluation of decisions against uniform baselines and an independent loop."""
import copy

import pytest
import torch
import torch.nn.functional as F

from clado_cli.errors import InputError
from clado_cli.evaluate import evaluate_current, evaluate_decision, evaluate_uniform


def _decision(session, bits):
    return {"method": "clado", "budget": {"given": "x", "bytes": 1},
            "layers": {n: {"w_bits": bits, "a_bits": 8} for n in session.plan.decided_names},
            "fixed_layers": {l.name: {"w_bits": 8, "a_bits": 8} for l in session.plan.fixed},
            "cache": {"fingerprint": session.fingerprint, "batches": [0], "samples": 16},
            "solver": {"solver": "test", "status": "optimal", "optimal": True, "gap": 0.0},
            "predicted_loss_increase": 0.0, "warnings": []}


@pytest.mark.parametrize("bits", [2, 4])
def test_all_layers_at_b_equals_uniform_b(shared_session, bits):
    d = evaluate_decision(shared_session, _decision(shared_session, bits))
    (u,) = evaluate_uniform(shared_session, [bits], include_float=False)
    for key in ("top1", "top5", "loss", "samples"):
        assert d[key] == u[key]
    assert d["sizes"] == u["sizes"]


def test_evaluation_is_deterministic_and_matches_an_independent_loop(shared_session):
    s = shared_session
    dec = _decision(s, 4)
    dec["layers"][s.plan.decided_names[0]]["w_bits"] = 2
    a = evaluate_decision(s, dec)
    b = evaluate_decision(s, dec)
    assert {k: a[k] for k in ("top1", "top5", "loss")} == {k: b[k] for k in ("top1", "top5", "loss")}
    # independent: MQBench fake-quant modules applied by hand on a copy of the float model
    model = copy.deepcopy(s.float_model)
    qm = s.qmodel
    bits = {n: v["w_bits"] for n, v in dec["layers"].items()}
    for q in qm.decided + qm.fixed:
        layer = model.get_submodule(q.name)
        w_bits = bits.get(q.name, s.cfg.layers.fixed_weight_bits)
        layer.weight.data = q.w_fq[str(w_bits)](layer.weight.data)
        a_fq = q.a_fq
        layer.register_forward_pre_hook(lambda m, inp, a_fq=a_fq: (a_fq(inp[0]),))
    x, y = s.data.eval.images, s.data.eval.labels
    with torch.no_grad():
        logits = model(x)
    assert a["samples"] == len(y)
    assert a["top1"] == int((logits.argmax(1) == y).sum()) / len(y)
    assert a["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_decisions_for_another_model_are_refused(shared_session):
    s = shared_session
    d = _decision(s, 4)
    d["cache"]["fingerprint"] = "0" * 16
    with pytest.raises(InputError, match="another model or config"):
        evaluate_decision(s, d)
    d = _decision(s, 4)
    d["layers"]["not.a.layer"] = {"w_bits": 4, "a_bits": 8}
    with pytest.raises(InputError, match="unknown layer 'not.a.layer'"):
        evaluate_decision(s, d)
    d = _decision(s, 4)
    d["layers"][s.plan.decided_names[0]]["w_bits"] = 3
    with pytest.raises(InputError, match="not one of the candidates"):
        evaluate_decision(s, d)


def test_float_row_equals_the_float_model(shared_session):
    s = shared_session
    (flt,) = [r for r in evaluate_uniform(s, [], include_float=True)]
    with torch.no_grad():
        logits = s.float_model(s.data.eval.images)
    assert flt["top1"] == pytest.approx(float((logits.argmax(1) == s.data.eval.labels).float().mean()))

"""Issue 18: options as (weight bits, activation bits) pairs (`quant.options`): the CLADO engines
measure each pair as a hand-built deep copy does, configs without options keep their caches and
fingerprints, decisions record and evaluation applies each layer's activation width."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clado_cli.config import load_config
from clado_cli.errors import ConfigError
from tests.conftest import small_overrides

OPTIONS = [[2, 8], [4, 4], [4, 8], [8, 4]]
# four decided layers (layer1's convs) keep the reference engine's passes few
FEW = {"layers.include": ["layer1.*"]}


@pytest.fixture(scope="module")
def act_session(tmp_path_factory):
    from clado_cli.session import Session

    cfg = load_config(None, small_overrides(tmp_path_factory.mktemp("act_cache"), **FEW, **{"quant.options": OPTIONS}))
    s = Session(cfg)
    s.qmodel  # noqa: B018  (calibrate once)
    return s


def _by_hand(session, options, x, y):
    """L(S) on a deep copy of the float model: each (layer, (w, a)) in S gets its weight through
    the layer's w-bit MQBench quantizer and its input through the a-bit one; everything else float."""
    qm = session.qmodel
    model = copy.deepcopy(session.float_model).eval()
    for name, (w, a) in options:
        q = qm.qlayers[name]
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(q.w_fq[str(w)](q.layer.weight))
        fq = q.act_fq(a)
        layer.register_forward_pre_hook(lambda m, inp, fq=fq: (fq(inp[0]),))
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_the_option_space_is_the_pairs(act_session):
    from clado_cli.methods import space_of

    s = act_session
    assert s.qmodel.keys == [(2, 8), (4, 4), (4, 8), (8, 4)]
    assert s.manifest["candidates"] == [2, 4, 4, 8] and s.manifest["act_bits"] == [8, 4, 8, 4]
    assert s.manifest["quant"]["options"] == OPTIONS and "weight_candidates" not in s.manifest["quant"]
    space = space_of(s.manifest)
    assert [space.label(k) for k in range(4)] == ["w2a8", "w4a4", "w4a8", "w8a4"]
    # one input quantizer per activation width on decided layers, calibrated to different scales
    q = s.qmodel.decided[0]
    assert q.a_widths == [4, 8] and float(q.act_fq(4).scale) != float(q.act_fq(8).scale)
    assert all(f.a_widths == [8] for f in s.qmodel.fixed)
    state = s.qmodel.quant_state()
    assert f"{q.name}|a4|scale" in state and f"{q.name}|a8|scale" in state and f"{q.name}|a|scale" not in state
    assert f"{s.qmodel.fixed[0].name}|a|scale" in state


@pytest.mark.parametrize("engine", ["reference", "fast", "branching"])
def test_ltilde_of_pairs_equals_a_deep_copy_evaluation(act_session, engine):
    from clado_cli.prep.clado import BranchingRunner, clado_fast, clado_reference, make_runner

    s = act_session
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    if engine == "reference":
        vals = clado_reference(qm, x, y, "ce")
    else:
        runner = BranchingRunner(qm) if engine == "branching" else make_runner(qm, max_batch=3)[0]
        vals = clado_fast(qm, x, y, "ce", runner=runner)
    Lt, L0 = vals["Ltilde"], float(vals["L0"])
    assert L0 == pytest.approx(_by_hand(s, [], x, y), abs=1e-6)
    opts = qm.options
    B = len(qm.keys)
    for i, o in enumerate(opts):
        assert Lt[i, i] == pytest.approx(_by_hand(s, [o], x, y) - L0, abs=1e-5)
    for i, j in [(0, B + 1), (1, 2 * B + 3), (B + 3, 3 * B), (2, 3 * B + 1)]:
        assert Lt[i, j] == Lt[j, i] == pytest.approx(_by_hand(s, [opts[i], opts[j]], x, y) - L0, abs=1e-5)
    assert np.all(Lt[np.arange(B), np.arange(B)[::-1]][[0, 3]] == 0)   # same layer: 0


def test_fast_and_reference_engines_agree_with_pairs(act_session):
    from clado_cli.prep.clado import clado_fast, clado_reference, make_runner

    s = act_session
    x, y = s.sensitivity_batch(1)
    for loss in ("ce", "kl"):
        ref = clado_reference(s.qmodel, x, y, loss)
        for mb in (None, 1, 4):
            fast = clado_fast(s.qmodel, x, y, loss, runner=make_runner(s.qmodel)[0], max_batch=mb)
            assert np.abs(fast["Ltilde"] - ref["Ltilde"]).max() <= 1e-5


@pytest.mark.parametrize("bad, msg", [
    ({"quant.options": [[4, 8], [4, 8]]}, "option [4, 8] is given twice"),
    ({"quant.options": [[4, 8], [8, 1]]}, "option [8, 1]: widths must lie in 2..16"),
    ({"quant.options": [[4, 8], [32, 8]]}, "widths must lie in 2..16"),
    ({"quant.options": [[4, 8, 2]]}, "each option is a [weight bits, activation bits] pair"),
    ({"quant.options": []}, "needs at least one"),
    ({"quant.options": [[4, 8]], "quant.activation_candidates": [4, 8]}, "not both"),
    ({"quant.options": [[4, 8]], "quant.weight_candidates": [4, 8]}, "not both"),
    ({"quant.options": [[4, 8]], "quant.activation_bits": 4}, "not both"),
    ({"quant.activation_candidates": [4, 8], "quant.activation_bits": 4}, "not both"),
    ({"quant.activation_candidates": [4, 4]}, "distinct"),
    ({"quant.activation_candidates": [1, 4]}, "2..16"),
])
def test_bad_options_are_one_line_errors(bad, msg):
    with pytest.raises(ConfigError) as e:
        load_config(None, bad)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_configs_without_options_keep_their_manifest_and_fingerprint(small_cfg):
    from clado_cli.session import Session

    plain = Session(small_cfg())
    m = plain.manifest
    # exactly the keys (and values) a manifest had before options existed
    assert set(m["quant"]) == {"backend", "weight_candidates", "activation_bits", "weight", "activation"}
    assert "act_bits" not in m and m["candidates"] == [2, 4, 8]
    assert m["quant"] == plain.cfg.quant.model_dump(mode="json", exclude={"options", "activation_candidates"})
    assert "options" not in plain.cfg.to_dict()["quant"]
    # options (or activation candidates) with one activation width are the same set-up: same cache
    for same in ({"quant.options": [[8, 8], [2, 8], [4, 8]]}, {"quant.activation_candidates": [8]}):
        assert Session(small_cfg(**same)).fingerprint == plain.fingerprint
    four = Session(small_cfg(**{"quant.options": [[2, 4], [8, 4]]}))
    legacy = Session(small_cfg(**{"quant.weight_candidates": [2, 8], "quant.activation_bits": 4}))
    assert four.fingerprint == legacy.fingerprint


def test_activation_candidates_are_the_product(small_cfg):
    cfg = small_cfg(**{"quant.weight_candidates": [8, 2], "quant.activation_candidates": [8, 4]})
    assert cfg.quant.pairs() == [(2, 4), (2, 8), (8, 4), (8, 8)] and cfg.quant.act_options


def _mixed_decision(s):
    from clado_cli.decisions import validate_decision
    from tests.export.conftest import mixed_decision

    d = mixed_decision(s, cycle=(2, 4, 8))
    pairs = [(4, 4), (8, 4), (2, 8), (4, 8)]
    for i, name in enumerate(s.plan.decided_names):
        d["layers"][name] = {"w_bits": pairs[i % 4][0], "a_bits": pairs[i % 4][1]}
    return validate_decision(d)


def test_evaluate_applies_each_layers_activation_width(act_session):
    from clado_cli.evaluate import evaluate_decision

    s = act_session
    d = _mixed_decision(s)
    got = evaluate_decision(s, d)
    model = copy.deepcopy(s.float_model).eval()
    qm = s.qmodel
    for q in qm.decided + qm.fixed:
        spec = d["layers"].get(q.name) or d["fixed_layers"][q.name]
        layer = model.get_submodule(q.name)
        layer.weight.data = q.w_fq[str(spec["w_bits"])](layer.weight.data)
        fq = q.act_fq(spec["a_bits"])
        layer.register_forward_pre_hook(lambda m, inp, fq=fq: (fq(inp[0]),))
    x, y = s.data.eval.images, s.data.eval.labels
    with torch.no_grad():
        logits = model(x)
    assert got["top1"] == int((logits.argmax(1) == y).sum()) / len(y)
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    macs = s.layer_macs
    want = sum(macs[n] * v["w_bits"] * v["a_bits"] for n, v in d["layers"].items())
    assert got["bops"]["decided"] == want
    # a pair that is not an option is refused
    bad = copy.deepcopy(d)
    bad["layers"][s.plan.decided_names[0]] = {"w_bits": 2, "a_bits": 4}
    from clado_cli.errors import InputError

    with pytest.raises(InputError, match="not one of the options"):
        evaluate_decision(s, bad)


def test_prep_optimize_records_each_layers_decided_pair(act_session):
    from clado_cli.decide import decide
    from clado_cli.methods import space_of
    from clado_cli.optimize import resolve_budget
    from clado_cli.prep import run_prep

    s = act_session
    run_prep(s, "clado", 0, 0)
    space = space_of(s.cache.manifest)
    budget = resolve_budget(None, 4.0, sum(space.numel))
    for method in ("clado", "naive"):
        (d,) = decide(s.cache, [method], [budget])
        pairs = {(v["w_bits"], v["a_bits"]) for v in d["layers"].values()}
        assert pairs <= {tuple(p) for p in OPTIONS}
        macs = s.cache.load_layer_costs()
        if macs is not None:
            assert d["costs"]["bops"]["decided"] == sum(macs[n] * v["w_bits"] * v["a_bits"]
                                                       for n, v in d["layers"].items())


def test_mpqco_with_activation_widths_fast_equals_reference(act_session):
    from clado_cli.prep.mpqco import mpqco_fast, mpqco_reference

    s = act_session
    x, y = s.sensitivity_batch(0)
    model = s.float_model.requires_grad_(True)
    fast = mpqco_fast(model, s.qmodel, x, y)["s"]
    ref = mpqco_reference(model, s.qmodel, x, y)["s"]
    assert fast.shape == (4, 4)
    assert np.allclose(fast, ref, rtol=1e-4, atol=1e-12)
    # the activation term enters: w4a4 and w4a8 share the weight term, not the sensitivity
    assert np.all(fast[:, 1] != fast[:, 2])


def test_hawq_refuses_activation_widths_in_one_line(act_session):
    from clado_cli.errors import UsageError
    from clado_cli.prep import run_prep

    with pytest.raises(UsageError, match="HAWQ-V3 is not defined for options that differ in activation width") as e:
        run_prep(act_session, "hawq", 0, 0, dry_run=True)
    assert "\n" not in str(e.value)


def test_activation_elements_are_measured_with_the_macs_and_give_option_bytes(act_session):
    from clado_cli.methods import space_of
    from clado_cli.prep import run_prep

    s = act_session
    run_prep(s, "clado", 0, 0)
    elems = s.cache.load_act_elements()
    assert elems == s.layer_act_elements and set(elems) == set(s.plan.decided_names + s.plan.fixed_names)
    # an input of shape (C, H, W) per sample: the first decided layer reads the stem's output
    x = s.example_input
    seen = {}
    h = s.float_model.get_submodule(s.plan.decided_names[0]).register_forward_pre_hook(
        lambda m, inp: seen.update(n=inp[0][0].numel()))
    with torch.no_grad():
        s.float_model(x)
    h.remove()
    assert elems[s.plan.decided_names[0]] == seen["n"]
    space = space_of(s.cache.manifest)
    per_layer = [elems[n] for n in space.layer_names]
    got = space.activation_bytes(per_layer).reshape(space.n_layers, -1)
    assert np.array_equal(got, np.outer(per_layer, [8, 4, 8, 4]) / 8)


def test_inspect_shows_each_option_pair(act_session, tmp_path):
    from clado_cli.errors import UsageError
    from clado_cli.inspect_cache import inspect, write_csv
    from clado_cli.methods import get_method, load_sensitivities
    from clado_cli.prep import run_prep

    s = act_session
    run_prep(s, "clado", 0, 0)
    rep = inspect(s.cache, "w4a4:w8a4")
    assert rep["options"] == ["w2a8", "w4a4", "w4a8", "w8a4"]
    G = load_sensitivities(s.cache, get_method("clado")).G
    M = np.array(rep["interaction"]["matrix"])
    assert M[0, 2] == G[0 * 4 + 1, 2 * 4 + 3] and M[0, 0] == 0 and rep["interaction"]["bits"] == "w4a4:w8a4"
    # the sensitivity-file formats have weight widths only: refused, in one line
    with pytest.raises(UsageError, match="differ in activation width"):
        write_csv(rep, tmp_path / "s.csv")
    with pytest.raises(UsageError, match="differ in activation width"):
        inspect(s.cache, "w4a4", pairs_csv=tmp_path / "p.csv")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p.csv").exists()
    with pytest.raises(UsageError, match="not one of the options w2a8, w4a4, w4a8, w8a4"):
        inspect(s.cache, "4")


def test_export_writes_each_layers_activation_width(act_session, tmp_path):
    """ONNX QDQ inputs at each decided layer's own width (4-bit inputs in UINT4 behind a Clip,
    8-bit in UINT8), run by ONNX Runtime with clado's numbers; the encodings record the widths."""
    import json

    import onnx

    from clado_cli.export import export_decision
    from tests.export.conftest import compare

    s = act_session
    d = _mixed_decision(s)
    path = tmp_path / "act.onnx"
    export_decision(s, d, "onnx", path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    qm = s.qmodel
    for name, spec in d["layers"].items():
        want = onnx.TensorProto.UINT4 if spec["a_bits"] <= 4 else onnx.TensorProto.UINT8
        assert inits[f"{name}.input_zero_point"].data_type == want
        scale = float(onnx.numpy_helper.to_array(inits[f"{name}.input_scale"]))
        assert scale == pytest.approx(float(qm.qlayers[name].act_fq(spec["a_bits"]).scale), rel=1e-7)
    assert {v["a_bits"] for v in d["layers"].values()} == {4, 8}
    c = compare(s, d, path, s.data.eval.images[:200])
    per_image = (c["ort"] - c["ref"]).abs().max(dim=1).values / float(c["ref"].abs().max())
    assert float(per_image[~c["flipped"]].max()) <= 1e-4
    enc = tmp_path / "act.encodings.json"
    export_decision(s, d, "encodings", enc)
    bits = {(q["layer"], q["tensor"]): q["bits"] for q in json.loads(enc.read_text())["quantizers"]}
    for name, spec in d["layers"].items():
        assert bits[(name, "input")] == spec["a_bits"] and bits[(name, "weight")] == spec["w_bits"]
    widths = json.loads({p.key: p.value for p in model.metadata_props}["clado.widths"])
    assert all(widths[n]["a_bits"] == spec["a_bits"] for n, spec in d["layers"].items())


@pytest.mark.parametrize("extra", [{"quant.options": OPTIONS}, {"quant.activation_candidates": [4, 8]}])
def test_a_config_with_options_round_trips_through_its_dict(extra):
    from clado_cli.decisions import flatten

    cfg = load_config(None, extra)
    again = load_config(None, flatten(cfg.to_dict()))
    assert again.quant.pairs() == cfg.quant.pairs() and again.quant.manifest_dump() == cfg.quant.manifest_dump()


def test_measured_loss_increase_applies_each_pair(act_session):
    from clado_cli.measure import loss_increases
    from clado_cli.decisions import option_keys

    s = act_session
    d = _mixed_decision(s)
    (got,) = loss_increases(s, [option_keys(d, True)], [0])
    x, y = s.sensitivity_batch(0)
    opts = [(n, (v["w_bits"], v["a_bits"])) for n, v in d["layers"].items()]
    assert got["loss_increase"] == pytest.approx(_by_hand(s, opts, x, y) - _by_hand(s, [], x, y), abs=1e-5)


def test_mpqco_input_term_is_the_first_order_change_of_the_logit(act_session):
    """Independent of the engines: the directional derivative of z_n along (ΔW of w bits, the
    input's quantization error at a bits), by central differences on a float64 copy."""
    from clado_cli.prep.mpqco import mpqco_fast

    s = act_session
    qm = s.qmodel
    x, y = s.sensitivity_batch(0)
    x, y = x[:4], y[:4]
    fast = mpqco_fast(s.float_model.requires_grad_(True), qm, x, y)["s"]
    l, k = 1, 1                                  # layer1.0.conv2 at w4a4
    name = qm.decided[l].name
    w, a = qm.pairs[k]
    q = qm.qlayers[name]
    # the input's quantization error on the float32 model (what the quantizer sees)
    seen = {}
    h = s.float_model.get_submodule(name).register_forward_pre_hook(lambda m, inp: seen.update(u=inp[0].detach()))
    with torch.no_grad():
        s.float_model(x)
    h.remove()
    du = (q.act_fq(a)(seen["u"]) - seen["u"]).double()
    dw = (q.quantized_weight(w) - q.layer.weight.detach()).double()
    model = copy.deepcopy(s.float_model).double().eval()
    layer = model.get_submodule(name)
    w0 = layer.weight.detach().clone()

    def z(t):
        with torch.no_grad():
            layer.weight.copy_(w0 + t * dw)
            hk = layer.register_forward_pre_hook(lambda m, inp: (inp[0] + t * du,))
            try:
                return model(x.double()).gather(1, y.reshape(-1, 1)).squeeze(1)
            finally:
                hk.remove()

    eps = 1e-6
    deriv = (z(eps) - z(-eps)) / (2 * eps)
    want = float(((deriv / z(0.0)) ** 2).sum()) / (2 * len(y))
    assert fast[l, k] == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("method", ["clado", "naive"])
def test_an_activation_memory_budget_binds_and_is_met_exactly(act_session, method):
    """act_memory (the sum of the decided layers' input bytes at their activation widths) as a
    budget row, and act_peak (the largest) as a mask, beside a loose size budget."""
    from clado_cli.decide import decide, resolve_plan
    from clado_cli.prep import run_prep

    s = act_session
    run_prep(s, "clado", 0, 0)
    elements = s.cache.load_act_elements()
    names = list(s.plan.decided_names)
    free = decide(s.cache, [method], [], plan=resolve_plan(s.cache, s.cfg.layers, avg_bits=8.0))[0]
    used_free = sum(elements[n] * v["a_bits"] / 8 for n, v in free["layers"].items())
    plan = resolve_plan(s.cache, s.cfg.layers, avg_bits=8.0, others=["act_memory=rel:0.5"])
    (budget, _), = plan.points
    bound = budget.bounds[0]["bound"]
    low = sum(elements[n] * 4 / 8 for n in names)
    high = sum(elements[n] * 8 / 8 for n in names)
    assert bound == low + 0.5 * (high - low) and used_free > bound  # the unconstrained choice breaks it
    (d,) = decide(s.cache, [method], [], plan=plan)
    used = sum(elements[n] * v["a_bits"] / 8 for n, v in d["layers"].items())
    row = {c["name"]: c for c in d["constraints"]}["act_memory"]
    assert used <= bound and row["value"] == used and row["binding"]
    assert d["costs"]["decided"]["act_memory"] == used
    peak = resolve_plan(s.cache, s.cfg.layers, avg_bits=8.0, others=["act_peak=rel:0"])
    (d,) = decide(s.cache, [method], [], plan=peak)
    smallest_peak = max(elements[n] * 4 / 8 for n in names)
    assert max(elements[n] * v["a_bits"] / 8 for n, v in d["layers"].items()) <= smallest_peak
    assert d["costs"]["decided"]["act_peak"] <= peak.points[0][0].bounds[0]["bound"] == smallest_peak

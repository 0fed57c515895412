"""Sensitivities from CSV files: inspect -> CSV -> optimize gives the decision the cache gives
(same widths, same predicted loss, bit for bit), a hand-written file solves without any model,
and every malformed file is one error line naming the problem.

The cache here is written directly (the embedded model's first decided layers, two batches of
plausible numbers per method): no model, no prep; tests/cli/test_cli.py does the same round trip
on a prepped cache of the embedded model."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from clado_cli.cli import app
from clado_cli.decide import decide
from clado_cli.decide import plan_for_space
from clado_cli.decide_file import decide_from_files
from clado_cli.inspect_cache import inspect, write_csv
from clado_cli.methods import SolveOptions, kind_of
from clado_cli.optimize import resolve_budget
from clado_cli.store.cache import Cache

LAYERS = [("layer1.0.conv1", 2304), ("layer1.0.conv2", 2304), ("layer2.0.conv1", 4608),
          ("layer2.0.downsample.0", 512), ("layer3.0.conv2", 36864)]
CANDS = [2, 4, 8]
USAGE, INPUT = 2, 3


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    manifest = {"format": 1, "candidates": CANDS, "quant": {"activation_bits": 8},
                "layers": {"decided": [list(l) for l in LAYERS], "fixed": [["conv1", 144], ["fc", 640]],
                           "fixed_weight_bits": 8, "fixed_activation_bits": 8},
                "model": {"name": "embedded", "weights_sha256": "0" * 64}, "data": {"dataset": "digits", "bs": 16}}
    c = Cache.open(tmp_path_factory.mktemp("sensfile") / "cache", manifest)
    c.ensure()
    rng = np.random.default_rng(17)
    L, B = len(LAYERS), len(CANDS)
    P = L * B
    for k in range(2):
        single = (rng.uniform(0.5, 1.5, L)[:, None] * np.array([0.3, 0.02, 0.001])[None, :]).ravel()
        single[5] = -1e-4   # a negative single, as real caches have
        inter = rng.normal(0, 0.01, (P, P))
        Lt = single[:, None] + single[None, :] + (inter + inter.T) / 2
        Lt[np.diag_indices(P)] = single
        Lt[0, 3] += 1e-16   # not exactly symmetric, as a sum over batches may be
        c.write_batch(kind_of("clado"), k, {"Ltilde": Lt, "L0": np.float64(0.1)}, n=16)
        c.write_batch(kind_of("mpqco"), k, {"s": rng.uniform(0, 1, (L, B)) * np.array([1.0, 0.1, 0.01])}, n=16)
        c.write_batch(kind_of("hawq"), k, {"traces": rng.uniform(1, 5, L), "iterations": np.full(L, 20),
                                           "qerr_sq": rng.uniform(0, 1, (L, B)) * np.array([1.0, 0.05, 0.002]),
                                           "numel": np.array([n for _, n in LAYERS])}, n=16)
    return c


@pytest.fixture(scope="module")
def files(cache, tmp_path_factory):
    d = tmp_path_factory.mktemp("sensfiles")
    rep = inspect(cache, pairs_csv=d / "pairs.csv")
    write_csv(rep, d / "sens.csv")
    return d / "sens.csv", d / "pairs.csv"


def test_round_trip_gives_the_cache_decisions_bit_for_bit(cache, files):
    sens, pairs = files
    total = sum(n for _, n in LAYERS)
    budgets = [resolve_budget(None, 3.0, total), resolve_budget(None, 5.0, total)]
    methods = ["clado", "mpqco", "hawq", "naive"]
    from_cache = decide(cache, methods, budgets, psd="exact")
    from_file, space = decide_from_files(sens, pairs, methods, lambda s: plan_for_space(s, None, size_specs=["avg:3", "avg:5"]),
                                         SolveOptions(psd="exact"), 8)
    assert space.layer_names == [n for n, _ in LAYERS] and space.candidates == CANDS
    assert len(from_file) == len(from_cache) == 8
    for a, b in zip(from_cache, from_file):
        assert (a["method"], a["budget"]) == (b["method"], b["budget"])
        assert a["layers"] == b["layers"], a["method"]
        assert a["predicted_loss_increase"] == b["predicted_loss_increase"], a["method"]
        assert a["sizes"]["decided_bytes"] == b["sizes"]["decided_bytes"]
        # the same negative singles (the file carries no standard errors to judge them by)
        assert [w.split(";")[0].split(":")[0] for w in a["warnings"]] == [w.split(":")[0] for w in b["warnings"]]
    assert len({json.dumps(d["layers"]) for d in from_file if d["method"] == "clado"}) == 2   # budgets bind


def test_round_trip_through_the_commands(cache, files, tmp_path):
    s, p = tmp_path / "s.csv", tmp_path / "p.csv"
    rep = json.loads(ok("inspect", "--cache", cache.root, "--csv", s, "--csv-pairs", p, "--json", "-q").stdout)
    assert rep["pairs_csv"] == str(p) and rep["numel"] == [n for _, n in LAYERS]
    assert s.read_bytes() == files[0].read_bytes() and p.read_bytes() == files[1].read_bytes()
    lines = s.read_text().splitlines()
    assert lines[0] == "method,layer,numel,bits,value" and len(lines) == 1 + 3 * len(LAYERS) * len(CANDS)
    assert len(p.read_text().splitlines()) == 1 + 15 * 15 - 5 * 9
    a = json.loads(ok("optimize", "--cache", cache.root, "-m", "clado", "--size-budget", "20000", "--json", "-q").stdout)
    b = json.loads(ok("optimize", "--sensitivities", s, "--pairs", p, "-m", "clado", "--size-budget", "20000",
                      "--json", "-q").stdout)
    assert a["layers"] == b["layers"] and a["predicted_loss_increase"] == b["predicted_loss_increase"]
    import hashlib

    assert b["sensitivities"] == {"source": "file", "file": str(s), "sha256": hashlib.sha256(s.read_bytes()).hexdigest(),
                                  "pairs_file": str(p), "pairs_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    assert b["cache"] == {"fingerprint": None, "batches": None, "samples": None}
    assert b["model"] == {"name": None, "weights_sha256": None} and b["config"] == {}
    assert b["fixed_layers"] == {} and b["sizes"]["fixed_bytes"] == 0.0


HAND = """method,layer,numel,bits,value
clado,a,100,2,0.5
clado,a,100,4,0.1
clado,b,1000,4,0.2
clado,b,1000,2,0.9
clado,c,10,2,0.05
clado,c,10,4,0.01
mpqco,a,100,2,3.0
mpqco,a,100,4,1.0
mpqco,b,1000,2,2.0
mpqco,b,1000,4,0.5
mpqco,c,10,2,1.0
mpqco,c,10,4,0.1
"""
HAND_PAIRS = """layer_a,bits_a,layer_b,bits_b,value
a,2,b,2,1.0
a,2,b,4,0.65
a,4,b,2,1.3
a,4,b,4,0.3
a,2,c,2,0.56
a,2,c,4,0.52
a,4,c,2,0.16
a,4,c,4,0.12
b,2,c,2,0.96
b,2,c,4,0.92
b,4,c,2,0.26
b,4,c,4,0.21
c,2,b,2,0.96
"""


@pytest.fixture
def hand(tmp_path):
    s, p = tmp_path / "hand.csv", tmp_path / "hand-pairs.csv"
    s.write_text(HAND)
    p.write_text(HAND_PAIRS)
    return s, p


def test_hand_written_file_solves_without_any_model(hand, tmp_path, monkeypatch):
    from clado_cli import session
    from clado_cli.optimize import OptionSpace, brute_force, g_from_ltilde

    monkeypatch.setattr(session.Session, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    s, p = hand
    budget = 100 * 2 // 8 + 1000 * 4 // 8 + 10 * 4 // 8   # 530 bytes
    out = tmp_path / "d"
    r = ok("optimize", "--sensitivities", s, "--pairs", p, "--size-budget", str(budget), "--out-dir", out, "--json", "-q")
    ds = json.loads(r.stdout)
    assert [d["method"] for d in ds] == ["clado", "mpqco", "naive"]
    assert json.loads((out / "index.json").read_text())["fingerprint"] is None
    space = OptionSpace(["a", "b", "c"], [2, 4], [100, 1000, 10])
    Lt = np.array([[0.5, 0, 1.0, 0.65, 0.56, 0.52], [0, 0.1, 1.3, 0.3, 0.16, 0.12],
                   [1.0, 1.3, 0.9, 0, 0.96, 0.92], [0.65, 0.3, 0, 0.2, 0.26, 0.21],
                   [0.56, 0.16, 0.96, 0.26, 0.05, 0], [0.52, 0.12, 0.92, 0.21, 0, 0.01]])
    G = g_from_ltilde(Lt, space)
    best, value = brute_force(space, budget, lambda x: x @ G @ x / 2)
    clado = ds[0]
    assert [clado["layers"][n]["w_bits"] for n in "abc"] == [space.candidates[k] for k in best]
    assert clado["predicted_loss_increase"] == pytest.approx(value, abs=1e-12)
    assert clado["sizes"]["decided_bytes"] <= budget
    from clado_cli.decisions import read_decision

    read_decision(out / f"decision-clado-{budget}.json")   # valid against the schema
    lin = ok("optimize", "--sensitivities", s, "-m", "mpqco", "--avg-bits", "4", "--json", "-q")
    assert {v["w_bits"] for v in json.loads(lin.stdout)["layers"].values()} == {4}


def test_a_decision_from_a_file_needs_the_model_named(hand, tmp_path):
    from clado_cli.decisions import config_of_decision
    from clado_cli.errors import UsageError

    s, p = hand
    d = tmp_path / "d.json"
    ok("optimize", "--sensitivities", s, "-m", "mpqco", "--avg-bits", "3", "-o", d, "-q")
    r = invoke("evaluate", d, "-q")
    assert r.exit_code == USAGE
    assert "names no network: pass --model or a config" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    doc = json.loads(d.read_text())
    with pytest.raises(UsageError):
        config_of_decision(doc, {"device": "cpu"})
    cfg = config_of_decision(doc, {"model.name": "embedded"})
    assert cfg.model.name == "embedded"


def test_check_decision_of_a_file_decision_checks_the_widths_not_the_cache(hand, tmp_path):
    from clado_cli.errors import InputError
    from clado_cli.evaluate import check_decision

    s, _ = hand
    d = json.loads(ok("optimize", "--sensitivities", s, "-m", "mpqco", "--avg-bits", "3", "--json", "-q").stdout)
    from clado_cli.config import QuantConfig

    cfg = SimpleNamespace(quant=QuantConfig(weight_candidates=[2, 4, 8], activation_bits=6),
                          layers=SimpleNamespace(fixed_weight_bits=8, fixed_activation_bits=8),
                          model=SimpleNamespace(name="m"))
    session = SimpleNamespace(cfg=cfg, fingerprint="f" * 16, plan=SimpleNamespace(
        decided_names=["a", "b", "c"], fixed=[SimpleNamespace(name="conv1")]))
    check_decision(session, d)   # other activation width, fixed layers the decision does not know: fine
    cached = json.loads(json.dumps(d))
    cached["cache"]["fingerprint"] = session.fingerprint   # a cache's decision is still held to its a_bits
    with pytest.raises(InputError, match="has a_bits 8, but its input activations are quantized at 6"):
        check_decision(session, cached)
    session.plan.decided_names = ["a", "b", "x"]
    with pytest.raises(InputError, match="unknown layer 'c'"):
        check_decision(session, d)
    session.plan.decided_names = ["a", "b", "c"]
    cfg.quant.weight_candidates = [4, 8]
    d["layers"]["a"]["w_bits"] = 2
    with pytest.raises(InputError, match="w_bits 2, not one of the candidates"):
        check_decision(session, d)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


# (id, sensitivities text or None for a missing file, pairs text, extra args, exit code, message)
BAD = [
    ("missing-file", None, None, [], INPUT, r"sensitivities file not found"),
    ("empty", "", None, [], INPUT, r"is empty"),
    ("header-only", "method,layer,numel,bits,value\n", None, [], INPUT, r"a header but no rows"),
    ("wrong-columns", _edit(HAND, "numel,bits", "size,bits"), None, [], INPUT,
     r"has the columns method,layer,size,bits,value; expected method,layer,numel,bits,value"),
    ("short-row", _edit(HAND, "mpqco,a,100,2,3.0", "mpqco,a,100,2"), None, [], INPUT, r"line 8: 4 fields, expected 5"),
    ("non-numeric", _edit(HAND, "mpqco,a,100,2,3.0", "mpqco,a,100,2,big"), None, [], INPUT,
     r"line 8: value 'big' is not a number"),
    ("nan", _edit(HAND, "mpqco,a,100,2,3.0", "mpqco,a,100,2,nan"), None, [], INPUT, r"line 8: value nan is not finite"),
    ("inf", _edit(HAND, "mpqco,a,100,2,3.0", "mpqco,a,100,2,-inf"), None, [], INPUT, r"value -inf is not finite"),
    ("negative-numel", HAND.replace("mpqco,a,100,", "mpqco,a,-100,"), None, [], INPUT, r"line 8: numel -100 is negative"),
    ("zero-numel", HAND.replace(",a,100,", ",a,0,"), None, [], INPUT, r"numel 0 is outside"),
    ("fractional-numel", _edit(HAND, "mpqco,a,100,2", "mpqco,a,1.5,2"), None, [], INPUT, r"numel '1.5' is not an integer"),
    ("numel-differs", _edit(HAND, "mpqco,a,100,4", "mpqco,a,101,4"), None, [], INPUT,
     r"layer a has numel 101 here and 100 on an earlier row"),
    ("bits-out-of-range", _edit(HAND, "mpqco,a,100,4", "mpqco,a,100,40"), None, [], INPUT, r"bits 40 is outside 1..16"),
    ("duplicate-row", HAND + "mpqco,c,10,4,0.2\n", None, [], INPUT,
     r"line 14: duplicate row for method mpqco, layer c, 4 bits \(first on line 13\)"),
    ("layer-misses-a-width", _edit(HAND, "mpqco,b,1000,4,0.5\n", ""), None, [], INPUT,
     r"method mpqco gives layer b the widths \[2\] but layer a the widths \[2, 4\]"),
    ("widths-differ", HAND + "mpqco,c,10,8,0.01\n", None, [], INPUT, r"gives layer c the widths \[2, 4, 8\]"),
    ("method-mismatch", HAND.replace("mpqco", "hawq"), None, ["-m", "mpqco"], INPUT,
     r"holds no rows for method mpqco \(it holds: clado, hawq\)"),
    ("unknown-method", HAND + "naive,a,100,2,0.5\n", None, [], INPUT,
     r"method 'naive' is not a method with its own sensitivities"),
    ("not-utf8", b"method,layer\xff\n", None, [], INPUT, r"not a UTF-8 text file"),
    ("nul", "method,layer,numel,bits,value\x00\n", None, [], INPUT, r"holds a NUL character"),
    ("clado-without-pairs", HAND, None, ["-m", "clado"], USAGE, r"needs CLADO's pair terms: give --pairs"),
    ("pairs-for-linear-only", HAND, HAND_PAIRS, ["-m", "mpqco"], USAGE, r"--pairs holds CLADO's pair terms"),
    ("pairs-missing", HAND, None, ["--pairs", "nowhere.csv"], INPUT, r"pairs file not found"),
    ("pairs-wrong-columns", HAND, _edit(HAND_PAIRS, "bits_b", "w_b"), [], INPUT,
     r"has the columns layer_a,bits_a,layer_b,w_b,value; expected layer_a,bits_a,layer_b,bits_b,value"),
    ("pairs-not-symmetric", HAND, _edit(HAND_PAIRS, "c,2,b,2,0.96", "c,2,b,2,0.97"), [], INPUT,
     r"is not symmetric: line 10 gives 0.96 and line 14 gives 0.97 for the same pair"),
    ("pairs-missing-a-pair", HAND, _edit(HAND_PAIRS, "a,4,b,4,0.3\n", ""), [], INPUT,
     r"misses 1 pair\(s\) of options of different layers, the first a@4 - b@4"),
    ("pairs-too-few", HAND, "layer_a,bits_a,layer_b,bits_b,value\na,2,b,2,1.0\n", [], INPUT,
     r"gives 1 pairs; 3 layers at 2 widths need 12"),
    ("pairs-same-layer", HAND, HAND_PAIRS + "a,2,a,4,0.1\n", [], INPUT, r"both options are of layer a"),
    ("pairs-unknown-layer", HAND, HAND_PAIRS + "a,2,z,4,0.1\n", [], INPUT, r"layer 'z' is not one of"),
    ("pairs-unknown-width", HAND, HAND_PAIRS + "a,2,b,8,0.1\n", [], INPUT, r"8 bits is not one of .* widths \[2, 4\]"),
    ("pairs-duplicate", HAND, HAND_PAIRS + "a,2,b,2,1.0\n", [], INPUT, r"line 15: duplicate pair a@2 - b@2"),
    ("pairs-nan", HAND, _edit(HAND_PAIRS, "a,2,b,2,1.0", "a,2,b,2,NaN"), [], INPUT, r"value NaN is not finite"),
    ("pairs-without-sensitivities", None, HAND_PAIRS, ["--no-sens"], USAGE, r"--pairs goes with --sensitivities"),
    ("with-cache", HAND, None, ["--cache", "."], USAGE, r"--sensitivities replaces the cache"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_files_are_one_error_line(case, tmp_path):
    import re

    _, text, pairs, extra, code, message = case
    s, p = tmp_path / "s.csv", tmp_path / "p.csv"
    if text is not None:
        s.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["optimize", "--avg-bits", "3", "-q"]
    if "--no-sens" not in extra:
        args += ["--sensitivities", s]
    if pairs is not None:
        p.write_text(pairs)
        args += ["--pairs", p]
    args += [a for a in extra if a != "--no-sens"]
    if "-m" not in extra and "--pairs" not in args:
        args += ["-m", "mpqco"]
    r = invoke(*args)
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert re.search(message, lines[0]), lines[0]


def test_a_file_beyond_the_size_limit_is_refused_without_reading_it_whole(hand, monkeypatch):
    from clado_cli import sensfile

    monkeypatch.setattr(sensfile, "MAX_BYTES", 64)
    r = invoke("optimize", "--sensitivities", hand[0], "-m", "mpqco", "--avg-bits", "3", "-q")
    assert r.exit_code == INPUT and "larger than 64 bytes; refused" in r.stderr


def test_any_text_is_read_or_refused_as_bad_input(tmp_path):
    """Whatever a sensitivities or pairs file holds, reading it returns numbers or raises a clado
    input/usage error (never a crash of another kind)."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from clado_cli.errors import CladoError
    from clado_cli.sensfile import read_option_values, read_pairs

    cell = st.one_of(st.sampled_from(["mpqco", "a", "b", "4", "2", "-1", "1e400", "nan", "0.5", "", " ", '"x,y"',
                                      "\x00", "9" * 30]), st.text(max_size=6))
    row = st.lists(cell, min_size=0, max_size=6).map(",".join)
    header = st.sampled_from(["method,layer,numel,bits,value", "layer_a,bits_a,layer_b,bits_b,value", "x"])
    doc = st.tuples(header, st.lists(row, max_size=8)).map(lambda t: "\n".join([t[0], *t[1]]) + "\n")
    s = tmp_path / "s.csv"
    p = tmp_path / "p.csv"
    s.write_text(HAND)
    space = read_option_values(s, "clado").space

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(doc)
    def check(text):
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        for read in (lambda: read_option_values(p, "mpqco"),
                     lambda: read_pairs(p, space, np.zeros(6))):
            try:
                read()
            except CladoError:
                pass

    check()

"""Property-based tests (hypothesis): config loading, cache combination, and budget text that
is not a budget. (The budget grammar's own properties -- round trips, units, sweeps -- are in
tests/optimize/test_budget.py.)"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clado_cli.config import OBSERVERS, Config, load_config
from clado_cli.errors import CladoError, ConfigError, UsageError
from clado_cli.methods import kind_of

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- config loading ----------------------------------------------------------------------------------------------

# printable text that YAML round-trips as a string
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
               max_size=16)
POS = st.integers(min_value=1, max_value=10**6)
FLOAT_POS = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _opt(**fields):
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def _data_section(draw):
    d = draw(_opt(dataset=st.sampled_from(["digits", "idx:/data/mnist", "imagefolder:/data/imagenet"]),
                  bs=POS, seed=st.integers(-2**31, 2**31), calibration_size=POS,
                  eval_split=st.sampled_from(["test", "val", "train"]), eval_size=st.none() | POS,
                  image_size=POS, workers=st.integers(0, 64)))
    if draw(st.booleans()):
        sb = draw(st.integers(0, 1000))
        d["sb"], d["eb"] = sb, sb + draw(st.integers(0, 1000))
    return d


QUANTIZER = _opt(observer=st.sampled_from(OBSERVERS), per_channel=st.booleans(), symmetric=st.booleans(),
                 pot_scale=st.booleans())

VALID_CONFIG = _opt(
    model=_opt(name=st.sampled_from(["embedded", "resnet18", "pkg.mod:make", "net.py:build"]),
               weights=st.sampled_from(["DEFAULT", "none", "weights.pt"]), num_classes=st.none() | POS),
    data=_data_section(),
    quant=_opt(weight_candidates=st.lists(st.integers(2, 16), min_size=1, max_size=6, unique=True),
               activation_bits=st.integers(2, 16), weight=QUANTIZER, activation=QUANTIZER),
    layers=_opt(include=st.lists(TEXT, max_size=3), exclude=st.lists(TEXT, max_size=3),
                fix_first_last=st.booleans(), fixed=st.lists(TEXT, max_size=3),
                fixed_weight_bits=st.integers(2, 16), fixed_activation_bits=st.integers(2, 16)),
    prep=_opt(loss=st.sampled_from(["ce", "kl"]), engine=st.sampled_from(["fast", "reference"]),
              hawq_estimator=st.sampled_from(["per-layer", "all-layers"]), hawq_max_iter=POS, hawq_tol=FLOAT_POS),
    optimize=_opt(psd=st.sampled_from(["exact", "clip", "shift"]), solver=TEXT, time_limit=FLOAT_POS,
                  budgets=st.lists(TEXT, max_size=3),
                  methods=st.lists(st.sampled_from(["clado", "mpqco", "hawq", "naive"]), max_size=4)),
    cache_dir=TEXT, device=st.sampled_from(["cpu", "cuda", "auto"]), threads=st.none() | st.integers(1, 256),
)


def _write(tmp: str, name: str, data) -> Path:
    p = Path(tmp) / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True))
    return p


def _expected(section: dict, key: str, value):
    return sorted(value) if key == "weight_candidates" else value


def _check_subset(given_: dict, loaded: dict, path: str = ""):
    for key, value in given_.items():
        assert key in loaded, f"{path}{key} missing"
        if isinstance(value, dict):
            _check_subset(value, loaded[key], f"{path}{key}.")
        else:
            assert loaded[key] == _expected(given_, key, value), f"{path}{key}"


@SETTINGS
@given(VALID_CONFIG)
def test_valid_configs_load_with_every_value_kept(raw):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(_write(tmp, "c.yaml", raw))
        _check_subset(raw, cfg.to_dict())
        # dumping the loaded config and loading it again changes nothing
        again = load_config(_write(tmp, "again.yaml", cfg.to_dict()))
        assert again.to_dict() == cfg.to_dict()


FLAG_VALUES = {
    "data.bs": POS, "data.seed": st.integers(0, 10**6), "device": st.sampled_from(["cpu", "cuda", "auto"]),
    "threads": st.integers(1, 64), "prep.loss": st.sampled_from(["ce", "kl"]),
    "optimize.psd": st.sampled_from(["exact", "clip", "shift"]), "optimize.time_limit": FLOAT_POS, "cache_dir": TEXT,
    "model.name": st.sampled_from(["embedded", "resnet34"]), "data.dataset": st.sampled_from(["digits", "idx:/x"]),
}


@SETTINGS
@given(VALID_CONFIG, st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in FLAG_VALUES.items()}))
def test_flags_override_the_file_and_unset_flags_never_do(raw, flags):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "c.yaml", raw)
        base = load_config(path).to_dict()
        cfg = load_config(path, flags).to_dict()
        for dotted in FLAG_VALUES:
            node_base, node = base, cfg
            *parents, leaf = dotted.split(".")
            for part in parents:
                node_base, node = node_base[part], node[part]
            if flags.get(dotted) is None:
                assert node[leaf] == node_base[leaf], dotted
            else:
                assert node[leaf] == flags[dotted], dotted


@st.composite
def _config_with_an_unknown_key(draw):
    raw = draw(VALID_CONFIG)
    key = draw(st.from_regex(r"\A[a-z][a-z_]{0,12}\Z"))
    sections = [s for s in ("model", "data", "quant", "layers", "prep", "optimize")]
    where = draw(st.sampled_from([None] + sections))
    if where is None:
        assume(key not in Config.model_fields)
        raw[key] = draw(st.integers(-2 ** 63, 2 ** 63 - 1) | TEXT)
        return raw, key
    assume(key not in type(getattr(Config(), where)).model_fields)
    raw.setdefault(where, {})[key] = draw(st.integers(-2 ** 63, 2 ** 63 - 1) | TEXT)
    return raw, f"{where}.{key}"


@SETTINGS
@given(_config_with_an_unknown_key())
def test_an_unknown_key_anywhere_is_named(case):
    raw, dotted = case
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(ConfigError) as err:
            load_config(_write(tmp, "c.yaml", raw))
    msg = str(err.value)
    assert f"{dotted}: unknown key" in msg and "\n" not in msg and "c.yaml" in msg


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20)
SECTIONS = st.sampled_from(["model", "data", "quant", "layers", "prep", "optimize", "cache_dir", "device",
                            "threads", "name", "bs"])


@SETTINGS
@given(st.one_of(
    YAML_VALUES,
    st.dictionaries(SECTIONS, YAML_VALUES, max_size=4),
    st.dictionaries(SECTIONS, st.dictionaries(st.sampled_from(["bs", "sb", "eb", "name", "weights", "x"]) | TEXT,
                                              YAML_VALUES, max_size=4), max_size=3),
))
def test_any_yaml_document_loads_or_is_one_config_error(raw):
    """Whatever YAML a file holds, loading it gives a Config or a one-line ConfigError."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            load_config(_write(tmp, "c.yaml", raw))
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(Path(tmp) / "c.yaml"))


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_file_content_loads_or_is_one_clado_error(content):
    """Arbitrary text or bytes as a config file: a Config, or a one-line clado error (never a
    traceback: no UnicodeDecodeError, no yaml exception escaping)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            load_config(_write(tmp, "c.yaml", content))
        except CladoError as exc:
            assert "\n" not in str(exc)


# -- cache combination -------------------------------------------------------------------------------------------

@st.composite
def _batches(draw):
    """Per-batch arrays (same shapes across batches) and sample counts for batches 0..n-1."""
    n_batches = draw(st.integers(1, 7))
    shapes = draw(st.dictionaries(st.sampled_from(["Ltilde", "s", "traces", "qerr_sq"]),
                                  st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple),
                                  min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        arrays = {name: rng.normal(scale=draw(st.sampled_from([1e-3, 1.0, 1e3])), size=shape)
                  for name, shape in shapes.items()}
        batches.append((arrays, draw(st.integers(1, 256))))
    return batches


def _cache(root: Path, manifest=None):
    from clado_cli.store.cache import Cache

    c = Cache.open(root, manifest or {"format": 1, "test": "combine"})
    c.ensure()
    return c


def _fill(cache, batches, ks=None):
    for k, (arrays, n) in enumerate(batches):
        if ks is None or k in ks:
            cache.write_batch(kind_of("clado"), k, arrays, n)


@st.composite
def _batches_and_split(draw):
    batches = draw(_batches())
    ks = list(range(len(batches)))
    # a split into contiguous runs (as --sb/--eb ranges would make) or any partition
    if draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(ks) - 1)), max_size=len(ks) - 1))) if len(ks) > 1 else []
        bounds = [0, *cuts, len(ks)]
        parts = [ks[a:b] for a, b in zip(bounds, bounds[1:]) if ks[a:b]]
    else:
        labels = draw(st.lists(st.integers(0, 3), min_size=len(ks), max_size=len(ks)))
        parts = [[k for k, l in zip(ks, labels) if l == g] for g in sorted(set(labels))]
    return batches, parts


@FEW
@given(_batches_and_split())
def test_any_split_of_a_batch_range_combines_to_the_same_result(case):
    """Combining the parts of any split, each weighted by its samples, gives the combination of
    the whole range; and the whole is the sample-weighted mean of the batches."""
    batches, parts = case
    with tempfile.TemporaryDirectory() as tmp:
        c = _cache(Path(tmp))
        _fill(c, batches)
        whole, n_whole, ks = c.combine(kind_of("clado"))
        assert ks == list(range(len(batches))) and n_whole == sum(n for _, n in batches)
        for name in whole:
            direct = sum(n * a[name] for a, n in batches) / n_whole
            np.testing.assert_allclose(whole[name], direct, rtol=1e-12, atol=1e-12 * np.abs(direct).max())
        pieces = [c.combine(kind_of("clado"), part) for part in parts]
        assert sum(n for _, n, _ in pieces) == n_whole
        for name in whole:
            merged = sum(n * v[name] for v, n, _ in pieces) / n_whole
            np.testing.assert_allclose(merged, whole[name], rtol=1e-12, atol=1e-12 * np.abs(whole[name]).max())
        # the order and repetition of the batch list do not matter
        shuffled = list(reversed(ks)) + ks[: len(ks) // 2]
        again, n_again, _ = c.combine(kind_of("clado"), shuffled)
        assert n_again == n_whole and all(np.array_equal(again[x], whole[x]) for x in whole)


@FEW
@given(_batches_and_split())
def test_shards_merged_into_one_cache_combine_like_one_run(case):
    """Batches computed into separate caches (shards) and merged with `cache merge` give exactly
    the numbers of one cache holding them all."""
    from clado_cli.store import merge_caches

    batches, parts = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = _cache(tmp / "one")
        _fill(one, batches)
        shards = []
        for i, part in enumerate(parts):
            s = _cache(tmp / f"shard{i}")
            _fill(s, batches, set(part))
            shards.append(s.root)
        report = merge_caches(shards, tmp / "merged")
        merged = _cache(tmp / "merged")
        assert report["missing"] == {}
        want, n_want, ks_want = one.combine(kind_of("clado"))
        got, n_got, ks_got = merged.combine(kind_of("clado"))
        assert (n_got, ks_got) == (n_want, ks_want)
        assert all(np.array_equal(got[x], want[x]) for x in want)
        assert merged.verify() == []


# -- budget text that is not a budget (the grammar's properties are in tests/optimize) ----------------------------

@SETTINGS
@given(st.text(max_size=40), st.integers(1, 10**9))
def test_any_budget_text_resolves_or_is_one_usage_error(text, numel):
    from clado_cli.optimize import parse_budget_list, resolve_budget_spec

    try:
        budgets = [resolve_budget_spec(s, numel) for s in parse_budget_list(text)]
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert budgets and all(b.bytes >= 1 for b in budgets)

"""Noise and paired comparisons (clado_cli/stats.py and the batch combination's errors)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clado_cli.stats import binomial_se, mcnemar, paired_comparisons, weighted_se


def test_weighted_se_equal_weights_is_the_textbook_standard_error():
    rng = np.random.default_rng(0)
    vals = [rng.normal(size=(3, 2)) for _ in range(7)]
    got = weighted_se(vals, [10] * 7)
    want = np.std(np.stack(vals), axis=0, ddof=1) / math.sqrt(7)
    assert np.allclose(got, want)
    assert weighted_se(vals[:1], [10]) is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.integers(1, 64)), min_size=2, max_size=8))
def test_cache_combination_gives_the_same_errors_as_the_direct_formula(batches):
    import tempfile
    from pathlib import Path

    from clado_cli.store import Cache, Stored

    kind = Stored("t", "T", "test values")
    with tempfile.TemporaryDirectory() as d:
        c = Cache(Path(d) / "fp", {}, "fp")
        for k, (v, n) in enumerate(batches):
            c.write_batch(kind, k, {"a": np.array([v, 2 * v])}, n=n)
        means, n_total, ks, errors = c.combine(kind, se=True)
        want = weighted_se([np.array([v, 2 * v]) for v, _ in batches], [n for _, n in batches])
        assert np.allclose(errors["a"], want, rtol=1e-6, atol=1e-9)
        plain = c.combine(kind)
        assert len(plain) == 3 and np.array_equal(plain[0]["a"], means["a"]) and plain[1] == n_total


def test_mcnemar_exact_values():
    a = np.array([1] * 10 + [0] * 2 + [1] * 88, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 88, dtype=bool)
    r = mcnemar(a, b)
    assert (r["only_first"], r["only_second"]) == (10, 2)
    # two-sided exact binomial: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096
    assert r["p_value"] == pytest.approx(2 * 79 / 4096)
    assert mcnemar(a, a)["p_value"] == 1.0
    assert binomial_se(0.9, 100) == pytest.approx(0.03)


def test_paired_comparisons_match_decisions_to_the_size_matched_uniform_and_each_other():
    rng = np.random.default_rng(1)
    c = lambda p: rng.random(200) < p  # noqa: E731
    rows = [
        {"kind": "uniform", "label": "uniform 2-bit", "sizes": {"total_bytes": 100}, "correct": c(0.3)},
        {"kind": "uniform", "label": "uniform 4-bit", "sizes": {"total_bytes": 200}, "correct": c(0.9)},
        {"kind": "decision", "label": "clado @ 250B", "method": "clado", "budget": {"given": "250B"},
         "sizes": {"total_bytes": 240}, "correct": c(0.95)},
        {"kind": "decision", "label": "mpqco @ 250B", "method": "mpqco", "budget": {"given": "250B"},
         "sizes": {"total_bytes": 230}, "correct": c(0.9)},
    ]
    out = paired_comparisons(rows)
    assert [(o["first"], o["second"]) for o in out] == [
        ("clado @ 250B", "uniform 4-bit"), ("mpqco @ 250B", "uniform 4-bit"), ("clado @ 250B", "mpqco @ 250B")]
    assert all("correct" not in r and "_correct" not in r for r in rows)


def test_negative_singles_say_whether_they_are_noise(shared_session):
    from clado_cli.methods import get_method, load_sensitivities
    from clado_cli.prep import run_prep

    s = shared_session
    run_prep(s, "clado", 0, 1)
    sens = load_sensitivities(s.cache, get_method("clado"), [0, 1])
    assert sens.singles_se is not None and sens.singles_se.shape == sens.singles.shape
    sens.singles = np.abs(sens.singles) + 1.0
    sens.singles_se = np.full_like(sens.singles, 0.1)
    sens.singles[0] = -0.05     # within two standard errors of zero
    sens.singles[1] = -5.0      # far outside
    (w,) = sens.warnings()
    assert w.startswith("2 of 36 single-option loss deltas are negative; 1 of them lie within two standard errors")

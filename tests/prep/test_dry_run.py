"""`clado prep --dry-run`: the plan's structure and its time estimate, a timed probe of the real
work (no timed assertions: bench/dry_run.py compares estimates with measured times)."""
from __future__ import annotations

import math

import pytest


def test_probe_rows_spread_over_the_model():
    from clado_cli.methods.base import extrapolate_rows, probe_rows

    assert probe_rows(12) == [2, 6, 10]
    assert probe_rows(3) == [0, 1, 2] and probe_rows(1) == [0] and probe_rows(0) == []
    assert probe_rows(4) == [0, 2, 3]
    # the once-per-batch work plus the probed rows' share scaled to every row
    assert extrapolate_rows(1.0, 4.0, [2, 6, 10], [1.0] * 12) == pytest.approx(13.0)
    assert extrapolate_rows(1.0, 0.5, [2, 6, 10], [1.0] * 12) == 1.0 and extrapolate_rows(2.0, 9.0, [], [1.0] * 5) == 2.0
    # weighted: rows whose work shrinks along the model (the reference's measurement counts)
    assert extrapolate_rows(0.0, 3.0, [0], [3.0, 2.0, 1.0]) == pytest.approx(6.0)


@pytest.mark.parametrize("method,extra", [
    ("clado", {"prep.engine": "fast"}), ("clado", {"prep.engine": "reference"}),
    ("mpqco", {"prep.engine": "fast"}), ("mpqco", {"prep.engine": "reference"}),
    ("hawq", {"prep.hawq_estimator": "per-layer"}), ("hawq", {"prep.hawq_estimator": "all-layers"})])
def test_dry_run_plan_is_positive_finite_and_scales_with_batches(small_cfg, method, extra):
    from clado_cli.prep import PrepRun
    from clado_cli.session import Session

    # four decided layers keep the timed probes short (the estimators are the same at any size)
    s = Session(small_cfg(**extra, **{"layers.include": ["layer1.*"]}), log_fn=lambda *_: None)
    two = PrepRun(s, method, 0, 1).plan()
    assert two["dry_run"] and two["to_compute"] == [0, 1] and two["already_cached"] == []
    per = two["estimated_seconds_per_batch"]
    assert math.isfinite(per) and per > 0 and two["probe_seconds"] > 0
    assert two["estimated_seconds"] == pytest.approx(round(2 * per, 2), abs=0.011)
    assert two["estimated_cache_bytes"] > 0 and two["per_batch"]
    assert two["engine"] == extra.get("prep.engine", None if method == "hawq" else "fast")
    four = PrepRun(s, method, 0, 3).plan()
    assert four["to_compute"] == [0, 1, 2, 3] and four["estimated_cache_bytes"] == 2 * two["estimated_cache_bytes"]
    assert four["estimated_seconds"] == pytest.approx(round(4 * four["estimated_seconds_per_batch"], 2), abs=0.011)
    # nothing was cached but the calibration
    assert not any(s.cache.has_batch(PrepRun(s, method, 0, 0).kind, k) for k in range(4))


def test_dry_run_of_cached_batches_estimates_nothing(small_cfg):
    from clado_cli.prep import PrepRun, run_prep
    from clado_cli.session import Session

    s = Session(small_cfg(), log_fn=lambda *_: None)
    run_prep(s, "mpqco", 0, 0)
    plan = PrepRun(s, "mpqco", 0, 0).plan()
    assert plan["to_compute"] == [] and plan["estimated_seconds"] == 0 and plan["probe_seconds"] == 0


def test_fast_probe_leaves_the_runner_as_it_was(shared_session):
    """The probe times the runner's passes by wrapping run_pass on the instance; afterwards the
    runner is its plain self and computes the same numbers as a fresh one."""
    import numpy as np

    from clado_cli.prep.clado import clado_fast, make_runner
    from clado_cli.prep.clado.estimate import fast_seconds_per_batch

    s = shared_session
    x, y = s.sensitivity_batch(0)
    runner, _ = make_runner(s.qmodel)
    seconds = fast_seconds_per_batch(s.qmodel, runner, x, y, "ce")
    assert math.isfinite(seconds) and seconds > 0 and "run_pass" not in vars(runner)
    fresh, _ = make_runner(s.qmodel)
    a = clado_fast(s.qmodel, x, y, "ce", runner=runner)
    b = clado_fast(s.qmodel, x, y, "ce", runner=fresh)
    assert np.array_equal(a["Ltilde"], b["Ltilde"]) and a["L0"] == b["L0"]

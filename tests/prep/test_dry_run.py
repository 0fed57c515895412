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
    assert extrapolate_rows(1.0, 4.0, 12, 3) == pytest.approx(13.0)
    assert extrapolate_rows(1.0, 0.5, 12, 3) == 1.0 and extrapolate_rows(2.0, 9.0, 5, 0) == 2.0


@pytest.mark.parametrize("method,extra", [
    ("clado", {"prep.engine": "fast"}), ("clado", {"prep.engine": "reference"}),
    ("mpqco", {"prep.engine": "fast"}), ("mpqco", {"prep.engine": "reference"}),
    ("hawq", {"prep.hawq_estimator": "per-layer"}), ("hawq", {"prep.hawq_estimator": "all-layers"})])
def test_dry_run_plan_is_positive_finite_and_scales_with_batches(small_cfg, method, extra):
    from clado_cli.prep import PrepRun
    from clado_cli.session import Session

    s = Session(small_cfg(**extra), log_fn=lambda *_: None)
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

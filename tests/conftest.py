"""Shared fixtures: one embedded model per test session (trained once, ~8 s), small configs,
and a private cache directory per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _clado_env(tmp_path_factory):
    home = os.environ.get("CLADO_TEST_HOME") or str(tmp_path_factory.mktemp("clado_home"))
    os.environ["CLADO_HOME"] = home
    os.environ["CLADO_NO_PROGRESS"] = "1"
    import torch

    # one thread: the suite also runs subprocesses beside itself, and spinning OpenMP threads
    # on 2 cores cost far more than they give
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _loud_console():
    """`-q` in an in-process CLI call sets the console quiet for the process: each test starts
    with the console as a fresh process has it."""
    from clado_cli import console

    console.set_quiet(False)
    yield


def small_overrides(cache_dir, **extra):
    o = {"data.bs": 16, "data.sb": 0, "data.eb": 1, "data.calibration_size": 128, "cache_dir": str(cache_dir),
         "device": "cpu", "prep.hawq_max_iter": 20}
    o.update(extra)
    return o


@pytest.fixture
def small_cfg(tmp_path):
    from clado_cli.config import load_config

    def make(**extra):
        return load_config(None, small_overrides(tmp_path / "cache", **extra))

    return make


@pytest.fixture(scope="session")
def shared_session(tmp_path_factory):
    """A calibrated embedded-model session reused by read-only tests."""
    from clado_cli.config import load_config
    from clado_cli.session import Session

    cfg = load_config(None, small_overrides(tmp_path_factory.mktemp("shared_cache")))
    s = Session(cfg)
    s.qmodel  # noqa: B018  (calibrate once)
    return s

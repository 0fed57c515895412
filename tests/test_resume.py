"""Interrupted and concurrent `clado prep` runs, as real processes (`python -m clado_cli`).

- Kill and resume: `clado prep clado` is killed with SIGKILL at several random moments (during
  start-up, and while it holds a batch: computing or writing it), restarted each time, and must
  end with a cache identical to an uninterrupted run, with no temporary file counted as data.
- Concurrency: two processes on one cache split the batches (each computed exactly once) and
  calibrate once; and, deterministically, a process waits for a batch another process holds and
  then takes the other's result instead of recomputing it.

Small settings throughout: embedded model on digits, bs 16, calibration on 128 images, CLADO
batches 0..5. CLADO_HOME is the test session's, so the embedded model is trained once (by the
shared_session fixture) and never in the subprocesses.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clado_cli.cli import app
from clado_cli.store.cache import BATCH_RE, Cache
from clado_cli.methods import kind_of

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not Path("/proc/self/fd").is_dir(),
                                reason="needs POSIX signals and /proc (to see which batch lock a process holds)")

CONFIG = """\
data:
  bs: 16
  calibration_size: 128
device: cpu
threads: 1
"""
# one thread per process: two torch processes with two threads each on a busy 2-core machine
# spend most of their time spinning (and the numbers do not depend on the thread count)
SB, EB = 0, 5
BATCHES = list(range(SB, EB + 1))
SEED = int(os.environ.get("CLADO_KILL_SEED", "20240607"))


def _env() -> Dict[str, str]:
    env = dict(os.environ)  # CLADO_HOME is the session's (tests/conftest.py)
    env["CLADO_NO_PROGRESS"] = "1"
    env.pop("CLADO_DEBUG", None)
    return env


def _prep_args(cfg: Path, cache_dir: Path, *extra: str) -> List[str]:
    return ["prep", "clado", "-c", str(cfg), "--cache-dir", str(cache_dir), "--sb", str(SB), "--eb", str(EB),
            "--json", *extra]


def _start(cfg: Path, cache_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clado_cli", *_prep_args(cfg, cache_dir, *extra)],
                            env=_env(), cwd=str(cache_dir.parent), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(p: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}: {err[-2000:]}"
    assert "Traceback" not in err
    summary = json.loads(out)
    summary["_stderr"] = err
    return summary


def _held_batch_lock(pid: int) -> Optional[str]:
    """The batch lock file the process holds open (filelock keeps the fd while held), if any."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if Path(target).name.startswith(".batch_") and target.endswith(".lock"):
                return target
    except FileNotFoundError:
        return None
    return None


def _wait_for(cond, p: subprocess.Popen, timeout: float = 240, what: str = "") -> bool:
    """Poll until cond() (True) or the process exits (False)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.02)
    p.kill()
    pytest.fail(f"timed out waiting for {what}")


def _seed_calibration(src: Path, cache_dir: Path) -> None:
    """Copy a fingerprint directory's manifest and calibration into cache_dir, so that the
    subprocesses skip calibrating."""
    dst = cache_dir / src.name
    dst.mkdir(parents=True)
    for name in ("manifest.json", "quant_state.safetensors", "quant_state.json"):
        shutil.copy(src / name, dst / name)


def _data_files(root: Path) -> Dict[str, Path]:
    """Every file of a fingerprint directory that is data (not a lock or its holder note, not a temp file)."""
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and not p.name.endswith((".lock", ".holder")) and ".tmp" not in p.name}


def assert_same_cache(got: Path, want: Path) -> None:
    """Identical numbers and metadata; only the sidecars' timings (`seconds`) may differ, and npz
    bytes are compared by their arrays (zip members carry timestamps)."""
    g, w = _data_files(got), _data_files(want)
    assert sorted(g) == sorted(w)
    for rel in w:
        if rel.endswith(".npz"):
            with np.load(g[rel], allow_pickle=False) as a, np.load(w[rel], allow_pickle=False) as b:
                assert sorted(a.files) == sorted(b.files), rel
                for name in b.files:
                    assert np.array_equal(a[name], b[name]), f"{rel}:{name} differs"
        elif BATCH_RE.match(Path(rel).with_suffix(".npz").name) and rel.endswith(".json"):
            a, b = json.loads(g[rel].read_text()), json.loads(w[rel].read_text())
            a.pop("seconds"), b.pop("seconds"), a.pop("sha256"), b.pop("sha256")
            assert a == b, rel
        else:
            assert g[rel].read_bytes() == w[rel].read_bytes(), rel


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_session):
    """The config, and an uninterrupted reference run (same CLI command, in-process)."""
    base = tmp_path_factory.mktemp("resume")
    cfg = base / "prep.yaml"
    cfg.write_text(CONFIG)
    ref_dir = base / "reference"
    from clado_cli.config import load_config
    from clado_cli.session import Session

    threads = torch.get_num_threads()
    try:
        fp = Session(load_config(cfg)).fingerprint
        if fp == shared_session.fingerprint:  # reuse the shared session's calibration when it is this config's
            _seed_calibration(shared_session.cache.root, ref_dir)
        r = CliRunner().invoke(app, _prep_args(cfg, ref_dir, "-q"))
    finally:
        torch.set_num_threads(threads)  # the config's `threads: 1` must not leak into later tests
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["computed"] == BATCHES
    ref = ref_dir / fp
    # seconds per batch (compute and write), from the sidecars: kill delays are drawn on this scale
    per_batch = float(np.mean([json.loads((ref / "Ltilde" / f"batch_{k:05d}.json").read_text())["seconds"]
                               for k in BATCHES]))
    return {"cfg": cfg, "ref": ref, "fp": fp, "per_batch": max(per_batch, 0.05)}


def test_kill_and_resume_matches_an_uninterrupted_run(setup, tmp_path):
    cache_dir = tmp_path / "cache"
    _seed_calibration(setup["ref"], cache_dir)
    root = cache_dir / setup["fp"]
    rng = random.Random(SEED)
    kills = []  # (phase, seconds after start, batches complete before the kill)

    def complete() -> List[int]:
        return Cache(root, {}, setup["fp"]).batches(kind_of("clado"))

    for round_ in range(4):
        p = _start(setup["cfg"], cache_dir, "-q")
        t0 = time.time()
        if round_ == 0:  # a random moment of start-up (interpreter, imports, data, model)
            phase = "start-up"
            time.sleep(rng.uniform(0.2, 2.5))
            alive = p.poll() is None
        else:
            # a random moment while it holds a batch (computing it or writing its files); in
            # round 2 only once it has completed one more batch, so the resume keeps real progress
            phase = "holding a batch"
            need = len(complete()) + (1 if round_ == 2 else 0)
            alive = _wait_for(lambda: len(complete()) >= need and _held_batch_lock(p.pid) is not None, p,
                              what="a batch lock")
            if alive:
                time.sleep(rng.uniform(0.0, 1.0) * setup["per_batch"])
                alive = p.poll() is None
        if not alive:  # it finished before the chosen moment: nothing left to interrupt
            _finish(p)
            break
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        p.stdout.close(), p.stderr.close()
        kills.append((phase, round(time.time() - t0, 2), complete()))
    assert len(kills) >= 3, f"too few kills landed: {kills}"

    done_before = complete()
    summary = _finish(_start(setup["cfg"], cache_dir, "-q"))
    assert sorted(summary["computed"] + summary["skipped"]) == BATCHES
    assert summary["skipped"] == done_before  # resumed: what was complete is not recomputed

    # identical to the uninterrupted run, every file checks out
    assert_same_cache(root, setup["ref"])
    assert Cache.from_dir(root).verify() == []
    # whatever temp files the kills left (and a planted one, as a kill mid-write leaves) are not data
    (root / "Ltilde" / ".batch_00001.npz.k1ll3d.tmp").write_bytes(b"half a zip")
    (root / "Ltilde" / "batch_00009.npz").write_bytes(b"an npz whose sidecar was never written")
    r = CliRunner().invoke(app, ["cache", "ls", "--cache-dir", str(cache_dir), "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert len(listed) == 1 and listed[0]["methods"]["clado"]["batches"] == BATCHES
    r = CliRunner().invoke(app, ["cache", "verify", "--cache-dir", str(cache_dir), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report[0]["problems"] == []
    assert any(p.endswith(".k1ll3d.tmp") for p in report[0]["stray_temp_files"])
    # a resumed prep over the same range now has nothing to do
    again = CliRunner().invoke(app, _prep_args(setup["cfg"], cache_dir, "-q"))
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == []


def test_two_processes_share_one_cache(setup, tmp_path):
    """Started together on an empty cache: one calibrates, the other waits for it; every batch is
    computed by exactly one of them; the result equals the uninterrupted run."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    procs = [_start(setup["cfg"], cache_dir), _start(setup["cfg"], cache_dir)]
    a, b = (_finish(p) for p in procs)
    assert not set(a["computed"]) & set(b["computed"]), (a["computed"], b["computed"])
    assert sorted(a["computed"] + b["computed"]) == BATCHES
    for s in (a, b):
        assert sorted(s["computed"] + s["skipped"]) == BATCHES
    calibrations = a["_stderr"].count("calibrating quantizers") + b["_stderr"].count("calibrating quantizers")
    assert calibrations == 1, (a["_stderr"], b["_stderr"])
    root = cache_dir / setup["fp"]
    assert_same_cache(root, setup["ref"])
    assert Cache.from_dir(root).verify() == []


def test_a_held_batch_is_waited_for_not_recomputed(setup, tmp_path):
    """The test process claims batch 1 (as another prep would); the prep process computes the
    others, then waits on 1, and once the holder has written it and let go, takes it as done."""
    cache_dir = tmp_path / "cache"
    _seed_calibration(setup["ref"], cache_dir)
    root = cache_dir / setup["fp"]
    cache = Cache.from_dir(root)
    ref = Cache.from_dir(setup["ref"])
    with cache.claim(kind_of("clado"), 1, wait=False) as held:
        assert held
        p = _start(setup["cfg"], cache_dir, "-q")
        others = [k for k in BATCHES if k != 1]
        assert _wait_for(lambda: all(cache.has_batch(kind_of("clado"), k) for k in others), p,
                         what="the batches not held"), p.communicate()
        time.sleep(0.5)
        assert p.poll() is None, "prep did not wait for the held batch"
        assert not cache.has_batch(kind_of("clado"), 1)
        arrays, n = ref.read_batch(kind_of("clado"), 1)
        cache.write_batch(kind_of("clado"), 1, arrays, n, meta={"engine": "written-by-the-holder", "seconds": 0.0})
    summary = _finish(p)
    assert summary["computed"] == others and summary["skipped"] == [1]
    side = json.loads(cache.batch_path(kind_of("clado"), 1).with_suffix(".json").read_text())
    assert side["engine"] == "written-by-the-holder"  # taken as done, not recomputed
    assert Cache.from_dir(root).verify() == []
    for k in BATCHES:
        got, n_got = cache.read_batch(kind_of("clado"), k)
        want, n_want = ref.read_batch(kind_of("clado"), k)
        assert n_got == n_want and all(np.array_equal(got[x], want[x]) for x in want)

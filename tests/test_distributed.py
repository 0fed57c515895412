"""Issue 7: torchrun ranks and --shard K/N produce exactly the single-process cache."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clado_cli.cli import app
from clado_cli.store.cache import Cache, list_caches
from clado_cli.methods import kind_of

runner = CliRunner()


def _cfg(tmp_path, name, eb):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""
data: {{dataset: digits, bs: 16, sb: 0, eb: {eb}, calibration_size: 64}}
prep: {{hawq_max_iter: 10}}
cache_dir: {tmp_path / name}
device: cpu
threads: 1
""")
    return p


def _only_cache(root) -> Cache:
    (c,) = list_caches(root)
    return c


def _assert_same(a: Cache, b: Cache, method: str, ks):
    assert a.fingerprint == b.fingerprint
    assert a.batches(kind_of(method)) == b.batches(kind_of(method)) == list(ks)
    for k in ks:
        va, na = a.read_batch(kind_of(method), k)
        vb, nb = b.read_batch(kind_of(method), k)
        assert na == nb and set(va) == set(vb)
        for name in va:
            assert np.max(np.abs(va[name].astype(float) - vb[name].astype(float))) <= 1e-6, (method, k, name)


def _torchrun(cfg, method, tmp_path):
    env = {**os.environ, "CLADO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "clado_cli", "prep", method, "-c", str(cfg), "--json", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def _single(cfg, method):
    res = runner.invoke(app, ["prep", method, "-c", str(cfg), "--json", "-q"])
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("eb,split", [(1, "batches"), (0, "within-batch")])
def test_torchrun_two_ranks_equal_single_process(tmp_path, eb, split):
    single, multi = _cfg(tmp_path, "single", eb), _cfg(tmp_path, "multi", eb)
    for method in ("clado", "mpqco"):
        _single(single, method)
        summary = _torchrun(multi, method, tmp_path)
        assert summary["ranks"] == 2 and summary["split"] == split
        assert summary["memory"]["process_peak_rss_bytes"] > 0
        _assert_same(_only_cache(tmp_path / "single"), _only_cache(tmp_path / "multi"), method, range(eb + 1))


def test_shards_merge_to_the_single_run(tmp_path):
    single = _cfg(tmp_path, "single", 2)
    _single(single, "clado")
    for k in (0, 1):
        cfg = _cfg(tmp_path, f"shard{k}", 2)
        res = runner.invoke(app, ["prep", "clado", "-c", str(cfg), "--shard", f"{k}/2", "--json", "-q"])
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["computed"] == ([0, 2] if k == 0 else [1])
    s0, s1 = _only_cache(tmp_path / "shard0"), _only_cache(tmp_path / "shard1")
    res = runner.invoke(app, ["cache", "merge", str(s0.root), str(s1.root), "--into", str(tmp_path / "merged"), "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["missing"] == {} and report["methods"]["clado"]["batches"] == "0..2"
    _assert_same(_only_cache(tmp_path / "single"), _only_cache(tmp_path / "merged"), "clado", range(3))
    # a shard alone reports what is still missing
    res = runner.invoke(app, ["cache", "merge", str(s0.root), "--into", str(tmp_path / "partial"), "--json"])
    assert json.loads(res.stdout)["missing"] == {"clado": "1"}


def test_merging_different_fingerprints_fails(tmp_path):
    a = _cfg(tmp_path, "a", 0)
    b = tmp_path / "b.yaml"
    b.write_text(a.read_text().replace("bs: 16", "bs: 8").replace(str(tmp_path / "a"), str(tmp_path / "b")))
    _single(a, "mpqco")
    _single(b, "mpqco")
    ca, cb = _only_cache(tmp_path / "a"), _only_cache(tmp_path / "b")
    res = runner.invoke(app, ["cache", "merge", str(ca.root), str(cb.root), "--into", str(tmp_path / "m")])
    assert res.exit_code == 3
    assert res.stderr.startswith("Error: cannot merge caches of different fingerprints")

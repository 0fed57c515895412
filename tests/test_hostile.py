"""Hardening, round 2: inputs that are shared (decisions), tampered (caches) or careless (NaN,
link cycles, factories that exit), each checked for the behaviour the user must be able to
rely on — not only the error line (tests/test_bad_input.py has the matrix of those)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clado_cli.cli import app
from clado_cli.errors import CacheError, InputError

from .test_bad_input import SMALL_YAML, Ctx, _rename_array, _rewrite_batch, check_error, ctx, prepared  # noqa: F401


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_opening_a_decision_never_runs_its_factory_nor_writes_where_it_says(ctx: Ctx):
    marker = ctx.tmp / "ran.txt"
    evil = ctx.write("evil.py", f"open({str(marker)!r}, 'w').write('ran')\ndef build():\n    raise SystemExit(0)\n")
    elsewhere = ctx.tmp / "elsewhere-cache"
    d = ctx.decision_with(lambda d: (d["config"]["model"].update(name=f"{evil}:build"),
                                     d["config"].update(cache_dir=str(elsewhere))))
    r = invoke("evaluate", d, "-q")
    check_error(r, 2, r"names the factory")
    assert not marker.exists()
    # a decision's cache_dir is ignored: the user's (here a flag) is used, the file's never created
    d = ctx.decision_with(lambda d: d["config"].update(cache_dir=str(elsewhere)))
    r = invoke("evaluate", d, "--cache-dir", ctx.cache_dir, "--eval-size", "32", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert not elsewhere.exists()
    assert json.loads(r.stdout)["results"][0]["samples"] == 32


def test_a_factory_that_exits_is_an_error_naming_it(tmp_path):
    f = tmp_path / "quits.py"
    f.write_text("import sys\ndef build():\n    sys.exit(0)\n")
    r = invoke("layers", "--model", f"{f}:build", "--data", "synthetic:3x16x16", "-q")
    check_error(r, 3, r"model factory .*quits\.py:build failed: SystemExit")
    g = tmp_path / "gen.py"
    g.write_text("raise GeneratorExit('no')\n")
    r = invoke("layers", "--model", f"{g}:build", "--data", "synthetic:3x16x16", "-q")
    check_error(r, 3, r"cannot import model factory module .*gen\.py.*GeneratorExit")


def test_a_file_factory_imports_modules_beside_it_and_one_cache_for_every_spelling(tmp_path, monkeypatch):
    (tmp_path / "helper_mod_clado.py").write_text(
        "import torch.nn as nn\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),"
        " nn.Flatten(), nn.LazyLinear(10))\n")
    (tmp_path / "m.py").write_text("from helper_mod_clado import net\ndef build():\n    m = net()\n"
                                   "    import torch\n    m(torch.zeros(1, 3, 16, 16))\n    return m\n")
    from clado_cli.config import load_config
    from clado_cli.session import Session

    monkeypatch.chdir(tmp_path)
    fps = set()
    for spelling in ("m.py:build", "./m.py:build", f"{tmp_path}/m.py:build"):
        cfg = load_config(None, {"model.name": spelling, "data.dataset": "synthetic:3x16x16", "device": "cpu",
                                 "cache_dir": str(tmp_path / "c")})
        fps.add(Session(cfg).fingerprint)
    assert len(fps) == 1


def test_merge_verifies_what_the_target_already_holds(ctx: Ctx, tmp_path):
    from clado_cli.methods import content_check, stored_kinds
    from clado_cli.store import Cache, merge_caches

    target = tmp_path / "target"
    shutil.copytree(ctx.cache, target / ctx.fp)
    _rewrite_batch(Ctx(ctx.tmp, ctx.cfg, target, ctx.fp, ctx.decision, ctx.state), _rename_array)
    with pytest.raises(CacheError, match="lacks the array 'Ltilde'"):
        merge_caches([ctx.cache], target, stored_kinds(), content_check(Cache.from_dir(ctx.cache)))


def test_nan_pixels_and_nan_results_are_named_and_never_cached(shared_session, monkeypatch):
    from clado_cli.prep import PrepRun
    from clado_cli.session import check_finite_batch

    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="1 pixel values that are NaN or inf"):
        check_finite_batch(x, "batch 0")
    run = PrepRun(shared_session, "mpqco", 0, 0, force=True)
    monkeypatch.setattr(type(run.method), "compute", lambda self, *a, **k: {"s": np.full((12, 3), np.inf)})
    before = shared_session.cache.has_batch(run.kind, 0)
    with pytest.raises(InputError, match="batch 0 of the MPQCO sensitivities: 36 values of s are NaN or inf"):
        run.compute(0)
    assert shared_session.cache.has_batch(run.kind, 0) == before


def test_images_follow_links_once_and_count_a_cycle_once(tmp_path):
    from PIL import Image

    from clado_cli.data.folders import list_images

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / "a" / f"{i}.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "b").symlink_to(root / "a", target_is_directory=True)
    assert len(list_images(str(root))) == 3


def test_outputs_keep_the_umask_and_figures_are_written_whole(tmp_path, monkeypatch):
    from clado_cli import plots
    from clado_cli.store import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "r.json", b"{}")
        assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    png = tmp_path / "pareto.png"
    rows = [{"kind": "float", "top1": 0.9, "sizes": {"total_bytes": 1000}}]
    plots.pareto_plot(rows, png, "t")
    good = png.read_bytes()
    import matplotlib.figure

    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError):
        plots.pareto_plot(rows, png, "t")
    assert png.read_bytes() == good and not list(tmp_path.glob("*.tmp"))


def test_quiet_means_quiet_and_messages_are_literal(capsys):
    from clado_cli import console

    console.set_quiet(True)
    try:
        console.warn("something odd")
        console.log("a log line")
    finally:
        console.set_quiet(False)
    assert capsys.readouterr().err == ""
    console.warn("path a[red]x[/red]b")
    console.log("see [bold]y[/bold]")
    err = capsys.readouterr().err
    assert "a[red]x[/red]b" in err and "[bold]y[/bold]" in err


def test_a_waiting_prep_says_who_holds_the_batch(small_cfg, monkeypatch):
    from clado_cli.methods import kind_of
    from clado_cli.session import Session

    s = Session(small_cfg())
    kind = kind_of("clado")
    s.cache.ensure()
    with s.cache.claim(kind, 0, wait=False) as held:
        assert held
        who = s.cache.holder(kind, 0)
        assert who["pid"] == os.getpid() and who["since"] > 0
    assert s.cache.holder(kind, 0) is None


def test_progress_into_a_file_is_written_as_it_goes(capsys, monkeypatch):
    from clado_cli import console

    monkeypatch.delenv("CLADO_NO_PROGRESS", raising=False)
    bar = console.progress()          # stderr is captured: not a terminal
    assert isinstance(bar, console.LineProgress)
    with bar:
        t = bar.add_task("calibration batches", total=3)
        for _ in range(3):
            bar.advance(t)
            if _ == 0:
                assert "calibration batches: 1/3" in capsys.readouterr().err   # before the end
    assert "calibration batches: 3/3" in capsys.readouterr().err


def test_model_output_that_does_not_fit_the_data_is_refused_up_front(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn as nn\n"
                 "class Pair(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.a = nn.Linear(64, 3)\n    def forward(self, x):\n        y = self.a(x.flatten(1))\n"
                 "        return y, y\n"
                 "def pair():\n    return Pair()\n"
                 "def few():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))\n")
    r = invoke("layers", "--model", f"{f}:pair", "-q")
    check_error(r, 2, r"returns a tuple, not a tensor of logits")
    r = invoke("layers", "--model", f"{f}:few", "-q")
    check_error(r, 2, r"has 3 outputs but digits has 10 classes")


def test_evaluate_keeps_the_decisions_eval_size(ctx: Ctx):
    d = ctx.decision_with(lambda d: d["config"]["data"].update(eval_size=48))
    r = invoke("evaluate", d, "--cache-dir", ctx.cache_dir, "-q", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["samples"] == 48


def test_dry_run_names_the_cheaper_hawq_estimator_when_per_layer_takes_hours(shared_session, monkeypatch):
    from clado_cli.methods import get_method
    from clado_cli.prep import PrepRun

    hawq = get_method("hawq")
    assert hawq.cheaper_hint(shared_session, 0.01, 4, 60.0) is None
    hint = hawq.cheaper_hint(shared_session, 0.01, 4, 5 * 3600.0)
    assert "about 5.0 h" in hint and "--estimator all-layers" in hint
    monkeypatch.setattr(type(hawq), "estimate", lambda self, s, x, y, eng, runner: 9000.0)
    plan = PrepRun(shared_session, "hawq", 0, 1).plan()
    assert "suggestion" in plan or plan["to_compute"] == []


def test_preprocessing_flags_set_the_transform(tmp_path):
    """--normalize and --input-size reach data.transform for file-backed data."""
    import gzip

    from clado_cli.cli.common import load

    cfg = load(None, False, normalize="none", input_size=12, data="idx:/x")
    assert cfg.data.transform.normalize == "none" and cfg.data.transform.input_size == 12
    r = invoke("layers", "--normalize", "bogus", "-q")
    check_error(r, 2, r"--normalize")

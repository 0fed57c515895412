"""Honest splits: sensitivity, calibration and evaluation images are disjoint by default for
every source, by a seeded split where a source has no held-out part of its own; an overlap the
config asks for is reported; a source too small to split as asked is a one-line error."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clado_cli.data import calibration_indices, load_data, permutation
from clado_cli.errors import InputError, UsageError


def _digit_pngs(root, n=120):
    """n PNGs of scikit-learn's digits (16x16 RGB), each made unique by its index in a corner."""
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    imgs = load_digits().images[:n]
    for i, im in enumerate(imgs):
        a = np.kron(im / 16 * 255, np.ones((2, 2))).astype(np.uint8)
        rgb = np.stack([a, a, a], -1)
        rgb[0, 0] = (i % 256, i // 256, 7)
        Image.fromarray(rgb).save(root / f"d{i:04d}.png")
    return root


def _digests(files):
    return {hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def _cfg(tmp_path, folder, **extra):
    from clado_cli.config import load_config

    o = {"model.name": "resnet18", "model.weights": "none", "model.num_classes": 10,
         "data.dataset": f"images:{folder}", "data.image_size": 16, "data.bs": 8, "data.sb": 0, "data.eb": 3,
         "data.calibration_size": 24, "cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    o.update(extra)
    return load_config(None, o)


def test_images_held_out_split_is_disjoint_by_content_and_seeded(tmp_path):
    folder = _digit_pngs(tmp_path / "imgs")
    d = load_data(f"images:{folder}", image_size=16)
    assert (len(d.train), len(d.eval)) == (90, 30)            # ceil(120 / 4) held out
    assert not _digests(d.train.files) & _digests(d.eval.files)
    assert len(_digests(d.train.files) | _digests(d.eval.files)) == 120
    # the same split every time, whatever data.seed says (it is not an argument)
    again = load_data(f"images:{folder}", image_size=16)
    assert again.train.files == d.train.files and again.eval.files == d.eval.files
    # sensitivity batches 0..3 of 8 (the permutation's head) and 24 calibration images (its
    # tail) share no file with each other or with the evaluation images
    n = len(d.train)
    sens = [d.train.files[i] for i in permutation(n, 0)[:32].tolist()]
    cal = [d.train.files[i] for i in calibration_indices(n, 24, 0).tolist()]
    assert not _digests(sens) & _digests(cal)
    assert not (_digests(sens) | _digests(cal)) & _digests(d.eval.files)
    # pixels too: no evaluation image equals a sensitivity image
    ev = torch.stack([d.eval[i][0] for i in range(len(d.eval))])
    for f in sens[:8]:
        x = d.train[d.train.files.index(f)][0]
        assert not any(torch.equal(x, e) for e in ev)


def test_imagefolder_without_val_holds_out_a_seeded_part_of_train(tmp_path):
    folder = _digit_pngs(tmp_path / "flat", 40)
    for i, f in enumerate(sorted(folder.iterdir())):
        cls = tmp_path / "tree" / "train" / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        f.rename(cls / f.name)
    d = load_data(f"imagefolder:{tmp_path / 'tree'}", image_size=16)
    assert (len(d.train), len(d.eval)) == (30, 10) and d.holdout == {"fraction": 0.25, "seed": 0}
    assert not set(d.train.indices) & set(d.eval.indices)
    assert d.train.indices == load_data(f"imagefolder:{tmp_path / 'tree'}", image_size=16).train.indices


def test_session_reports_disjoint_splits_and_fingerprints_the_holdout(tmp_path):
    from clado_cli.session import Session

    folder = _digit_pngs(tmp_path / "imgs")
    s = Session(_cfg(tmp_path, folder), log_fn=lambda *_: None)
    rep = s.splits()
    assert rep["sensitivity_calibration_overlap"] == 0 and rep["sensitivity_evaluation_overlap"] == 0
    assert rep["calibration_evaluation_overlap"] == 0 and rep["overlap_requested"] == []
    assert rep["training_images"] == 90 and rep["evaluation_images"] == 30
    assert rep["evaluation"].startswith("a held-out 0.25 of the files, seed 0")
    assert s.manifest["data"]["holdout"] == {"fraction": 0.25, "seed": 0}
    s.check_batch_range(0, 3)
    # asked-for overlaps: reported, with the keys that asked
    head = Session(_cfg(tmp_path, folder, **{"data.calibration_from": "head", "data.eval_split": "train"}),
                   log_fn=lambda *_: None).splits()
    assert head["overlap_requested"] == ["data.calibration_from: head", "data.eval_split: train"]
    assert head["sensitivity_calibration_overlap"] == 24 and head["evaluation"] == "the training images"
    assert head["sensitivity_evaluation_overlap"] == 32 and head["calibration_evaluation_overlap"] == 24


def test_too_small_to_split_is_one_error_naming_the_counts(tmp_path):
    from clado_cli.session import Session

    folder = _digit_pngs(tmp_path / "imgs")
    s = Session(_cfg(tmp_path, folder, **{"data.eb": 9, "data.calibration_size": 24}), log_fn=lambda *_: None)
    with pytest.raises(UsageError, match=r"has 90 images, too few to keep sensitivity batches 0\.\.9 \(80 images in "
                                         r"batches of 8\) and 24 calibration images apart \(104 needed\): lower eb "
                                         r"to 7, or lower data\.calibration_size to 10, or set data\.allow_overlap"):
        s.check_batch_range(0, 9)
    # allowed: the overlap is then reported
    ok = Session(_cfg(tmp_path, folder, **{"data.eb": 9, "data.allow_overlap": True}), log_fn=lambda *_: None)
    ok.check_batch_range(0, 9)
    assert ok.splits()["sensitivity_calibration_overlap"] == 14
    assert ok.splits()["overlap_requested"] == ["data.allow_overlap: true"]
    # one image cannot be split at all
    lone = tmp_path / "lone"
    lone.mkdir()
    (folder / "d0000.png").rename(lone / "x.png")
    with pytest.raises(InputError, match=r"images data at .*lone: 1 image; holding out a seeded 0\.25"):
        load_data(f"images:{lone}", image_size=16)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    from clado_cli.cli import app

    folder = _digit_pngs(tmp_path / "imgs", 40)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: resnet18, weights: none, num_classes: 10}}\n"
                   f"data: {{dataset: 'images:{folder}', image_size: 16, bs: 8, sb: 0, eb: 2, calibration_size: 8}}\n"
                   f"cache_dir: {tmp_path / 'cache'}\ndevice: cpu\n")
    res = CliRunner().invoke(app, ["prep", "clado", "-c", str(cfg), "--dry-run", "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: the training split of images:") and res.stderr.count("\n") == 1
    assert "has 30 images, too few to keep sensitivity batches 0..2 (24 images" in res.stderr
    assert "lower --eb to 1, or lower data.calibration_size to 6" in res.stderr


def test_digits_default_splits_unchanged():
    """digits comes split: no holdout of clado's, the same training images as ever."""
    d = load_data("digits")
    assert d.holdout is None and len(d.train) == 1347 and len(d.eval) == 450

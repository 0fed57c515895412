"""clado_cli.data: the data set kinds and the batches that define the sensitivity and
calibration sets."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image

from clado_cli.data import (
    DATASETS,
    DataSplits,
    TensorData,
    calibration_batches,
    eval_batches,
    load_data,
    num_batches,
    permutation,
    pseudo_label,
    sensitivity_batch,
)
from clado_cli.data.digits import DIGITS_MEAN, DIGITS_STD
from clado_cli.data.idx import MNIST_MEAN, MNIST_STD, read_idx
from clado_cli.errors import InputError, UsageError


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits")


# ---------------------------------------------------------------------------- registry / spec


def test_registry_kinds():
    assert DATASETS.names() == ["digits", "idx", "imagefolder", "images", "synthetic"]


def test_unknown_kind_lists_close_matches():
    with pytest.raises(UsageError, match=r"unknown data set 'imagefoldr'.*imagefolder"):
        load_data("imagefoldr:/somewhere")


def test_unknown_kind_lists_known_when_nothing_close():
    with pytest.raises(UsageError) as e:
        load_data("cifar10:/somewhere")
    assert "digits" in str(e.value) and "idx" in str(e.value) and "imagefolder" in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("kind", ["idx", "imagefolder", "images"])
def test_missing_path(tmp_path, kind):
    missing = str(tmp_path / "nope")
    with pytest.raises(InputError, match="data path not found: " + missing) as e:
        load_data(f"{kind}:{missing}")
    assert e.value.exit_code == 3


def test_kind_needs_path_and_digits_takes_none():
    with pytest.raises(UsageError, match="needs a path"):
        load_data("idx")
    with pytest.raises(UsageError, match="takes no path"):
        load_data("digits:/x")


def test_bad_eval_split():
    with pytest.raises(UsageError, match="eval split"):
        load_data("digits", eval_split="dev")


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_and_splits(digits):
    assert digits.spec == "digits"
    assert digits.num_classes == 10 and digits.labeled
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train) == 1347 and len(digits.eval) == 450
    x, y = digits.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert isinstance(y, int) and 0 <= y < 10
    # stratified: every class in both splits, in about the same proportion
    tr = torch.bincount(digits.train.labels, minlength=10)
    ev = torch.bincount(digits.eval.labels, minlength=10)
    assert (tr > 0).all() and (ev > 0).all()
    assert ((tr.float() / 3 - ev.float()).abs() <= 1).all()


def test_digits_normalization(digits):
    imgs = digits.train.images
    assert abs(imgs.mean().item()) < 1e-5
    assert abs(imgs.std(unbiased=False).item() - 1) < 1e-5
    # raw pixel 0 and 16 map to the ends of the normalized range
    assert imgs.min().item() == pytest.approx((0 - DIGITS_MEAN) / DIGITS_STD, abs=1e-5)
    assert imgs.max().item() == pytest.approx((1 - DIGITS_MEAN) / DIGITS_STD, abs=1e-5)


def test_digits_hardcoded_constants_match_the_split():
    from clado_cli.data.digits import digits_arrays

    x_tr = digits_arrays()[0]
    assert float(x_tr.mean()) == pytest.approx(DIGITS_MEAN, abs=1e-7)
    assert float(x_tr.std()) == pytest.approx(DIGITS_STD, abs=1e-7)


def test_digits_deterministic_and_disjoint(digits):
    again = load_data("digits")
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.eval.labels, digits.eval.labels)
    on_train = load_data("digits", eval_split="train")
    assert on_train.eval is on_train.train and len(on_train.eval) == 1347
    # no held-out image is a training image
    tr = {tuple(r.tolist()) for r in digits.train.images.flatten(1)}
    assert not any(tuple(r.tolist()) in tr for r in digits.eval.images.flatten(1))


# ---------------------------------------------------------------------------- idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def _write_idx(directory, n_train=30, n_test=12, gz=True, classes=4, hw=(28, 28)):
    rng = np.random.default_rng(0)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw)),
        "train-labels-idx1-ubyte": np.arange(n_train) % classes,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % classes,
    }
    for name, arr in data.items():
        raw = _idx_bytes(arr)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loads(tmp_path, gz):
    data = _write_idx(tmp_path, gz=gz)
    d = load_data(f"idx:{tmp_path}")
    assert d.labeled and d.num_classes == 4 and d.input_shape == (1, 28, 28)
    assert len(d.train) == 30 and len(d.eval) == 12
    x, y = d.train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    expected = (torch.from_numpy(data["train-images-idx3-ubyte"][3].astype(np.float32)) / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert d.eval.labels.tolist() == (np.arange(12) % 4).tolist()


def test_idx_eval_train_needs_no_test_files(tmp_path):
    _write_idx(tmp_path)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.remove(tmp_path / name)
    d = load_data(f"idx:{tmp_path}", eval_split="train")
    assert d.eval is d.train
    with pytest.raises(InputError, match="missing t10k-images-idx3-ubyte.gz"):
        load_data(f"idx:{tmp_path}")


def test_idx_missing_file_named(tmp_path):
    _write_idx(tmp_path)
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(InputError, match="missing train-labels-idx1-ubyte.gz"):
        load_data(f"idx:{tmp_path}")


def test_idx_truncated_gzip(tmp_path):
    _write_idx(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz"):
        load_data(f"idx:{tmp_path}")


def test_idx_truncated_data(tmp_path):
    _write_idx(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte.*truncated"):
        load_data(f"idx:{tmp_path}")


def test_idx_bad_magic_and_wrong_kind(tmp_path):
    _write_idx(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x56\x78" + p.read_bytes()[4:])
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*magic"):
        load_data(f"idx:{tmp_path}")
    # a label file where the images should be
    p.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*dimensions"):
        load_data(f"idx:{tmp_path}")


def test_idx_count_mismatch(tmp_path):
    _write_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(29))))
    with pytest.raises(InputError, match="30 images but .* 29 labels"):
        load_data(f"idx:{tmp_path}")


def test_read_idx_empty_file(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="x-idx1-ubyte"):
        read_idx(str(p))


# ---------------------------------------------------------------------------- imagefolder / images


def _image(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _imagenet_tree(root):
    sizes = [(37, 53), (53, 37), (40, 40)]
    for split, n in (("train", 3), ("val", 2)):
        for ci, cls in enumerate(["n001_cat", "n002_dog"]):
            for i in range(n):
                color = (200, 30, 30) if ci == 0 else (30, 30, 200)
                ext = ".JPEG" if i % 2 == 0 else ".png"
                _image(root / split / cls / f"img{i}{ext}", sizes[i % 3], color)


def test_imagefolder_loads(tmp_path):
    _imagenet_tree(tmp_path)
    d = load_data(f"imagefolder:{tmp_path}", image_size=32, eval_split="val")
    assert d.labeled and d.num_classes == 2 and d.input_shape == (3, 32, 32)
    assert len(d.train) == 6 and len(d.eval) == 4
    labels = [d.train[i][1] for i in range(len(d.train))]
    assert labels == [0, 0, 0, 1, 1, 1]
    for i in range(len(d.eval)):
        x, y = d.eval[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        # red images are class 0, blue class 1 (ImageNet-normalized: red channel high for red)
        assert (x[0].mean() > x[2].mean()) == (y == 0)
    # "test" is accepted as the held-out split too; deterministic transform
    d2 = load_data(f"imagefolder:{tmp_path}", image_size=32)
    assert torch.equal(d2.eval[1][0], d.eval[1][0])
    x, y = sensitivity_batch(d.train, 1, 3, seed=0)
    assert x.shape == (3, 3, 32, 32) and y.dtype == torch.int64


def test_imagefolder_val_missing_a_class_keeps_indices(tmp_path):
    _imagenet_tree(tmp_path)
    for f in (tmp_path / "val" / "n001_cat").iterdir():
        f.unlink()
    (tmp_path / "val" / "n001_cat").rmdir()
    d = load_data(f"imagefolder:{tmp_path}", image_size=16, eval_split="val")
    assert [d.eval[i][1] for i in range(len(d.eval))] == [1, 1]


def test_imagefolder_layout_errors(tmp_path):
    _imagenet_tree(tmp_path)
    (tmp_path / "val" / "n999_extra").mkdir()
    with pytest.raises(InputError, match="val/ has classes that train/ lacks: n999_extra"):
        load_data(f"imagefolder:{tmp_path}", eval_split="val")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="missing train/"):
        load_data(f"imagefolder:{empty}")
    (empty / "train" / "a").mkdir(parents=True)
    _image(empty / "train" / "a" / "x.png", (9, 9), (0, 0, 0))
    # no val/: train/ is split, which one image cannot be
    with pytest.raises(InputError, match=r"no val/, so train/ is split\): 1 image; .* needs at least 2"):
        load_data(f"imagefolder:{empty}", eval_split="val")
    assert len(load_data(f"imagefolder:{empty}", image_size=8, eval_split="train").eval) == 1


def test_corrupt_image_named(tmp_path):
    _imagenet_tree(tmp_path)
    bad = tmp_path / "train" / "n001_cat" / "img0.JPEG"
    bad.write_bytes(b"not an image")
    d = load_data(f"imagefolder:{tmp_path}", image_size=16, eval_split="val")
    with pytest.raises(InputError, match="img0.JPEG"):
        d.train[0]


def _unlabeled_tree(root):
    _image(root / "b.png", (37, 53), (250, 0, 0))
    _image(root / "a.jpg", (20, 30), (0, 250, 0))
    _image(root / "sub" / "c.BMP", (53, 37), (0, 0, 250))
    _image(root / "sub" / "deeper" / "d.webp", (31, 31), (250, 250, 0))
    _image(root / "gray.jpeg", (25, 25), 128, mode="L")
    (root / "notes.txt").write_text("not an image")


def test_images_unlabeled(tmp_path):
    _unlabeled_tree(tmp_path)
    every = ["a.jpg", "b.png", "gray.jpeg", os.path.join("sub", "c.BMP"), os.path.join("sub", "deeper", "d.webp")]
    d = load_data(f"images:{tmp_path}", image_size=24, eval_split="train")
    assert not d.labeled and d.num_classes is None and d.input_shape == (3, 24, 24)
    assert d.train is d.eval and len(d.train) == 5 and d.holdout is None
    assert [os.path.relpath(f, tmp_path) for f in d.train.files] == every
    x, y = d.train[3]
    assert x.shape == (3, 24, 24) and y == -1
    xb, yb = next(eval_batches(d.eval, 4))
    assert xb.shape == (4, 3, 24, 24) and yb.tolist() == [-1] * 4
    # the default: ceil(5/4) = 2 files held out, each part in path order
    d = load_data(f"images:{tmp_path}", image_size=24)
    train = [os.path.relpath(f, tmp_path) for f in d.train.files]
    held = [os.path.relpath(f, tmp_path) for f in d.eval.files]
    assert len(held) == 2 and sorted(train + held) == sorted(every) and not set(train) & set(held)
    assert train == sorted(train, key=every.index) and d.holdout == {"fraction": 0.25, "seed": 0}


def test_images_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="no image files"):
        load_data(f"images:{tmp_path}")


def test_pseudo_label_is_model_argmax(tmp_path):
    _unlabeled_tree(tmp_path)
    d = load_data(f"images:{tmp_path}", image_size=16, eval_split="train")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7))
    model.train()
    labeled = pseudo_label(d.train, model, "cpu", bs=2)
    assert model.training  # mode restored
    assert len(labeled) == 5
    x = torch.stack([d.train[i][0] for i in range(5)])
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    assert [labeled[i][1] for i in range(5)] == expected
    assert torch.equal(labeled[2][0], d.train[2][0])
    _, y = next(eval_batches(labeled, 5))
    assert y.tolist() == expected


def test_session_pseudo_labels_with_the_float_model_it_then_uses(tmp_path, monkeypatch):
    """An unlabeled folder: the session labels it with the float model and keeps that model
    (built once), so the labels are the argmax of the very model that prep measures."""
    import clado_cli.session as session_mod
    from clado_cli.config import load_config

    _unlabeled_tree(tmp_path / "imgs")
    cfg = load_config(None, {"model.name": "resnet18", "model.weights": "none", "model.num_classes": 4,
                             "data.dataset": f"images:{tmp_path / 'imgs'}", "data.image_size": 32,
                             "data.bs": 2, "cache_dir": str(tmp_path / "cache"), "device": "cpu"})
    s = session_mod.Session(cfg, log_fn=lambda *_: None)
    builds = []
    real = session_mod.Session._build_float
    monkeypatch.setattr(session_mod.Session, "_build_float", lambda self, sp: builds.append(1) or real(self, sp))
    labels = [s.data.train[i][1] for i in range(len(s.data.train))]
    model = s.float_model
    assert len(builds) == 1 and not model.training
    x = torch.stack([s.data.train[i][0] for i in range(len(s.data.train))])
    with torch.no_grad():
        assert model(x).argmax(1).tolist() == labels


def test_pseudo_label_in_memory(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    labeled = pseudo_label(digits.eval, model, torch.device("cpu"), bs=100)
    assert isinstance(labeled, TensorData)
    with torch.no_grad():
        assert torch.equal(labeled.labels, model(digits.eval.images).argmax(1))


# ---------------------------------------------------------------------------- batches


def test_permutation_seeded():
    p = permutation(100, 3)
    assert sorted(p.tolist()) == list(range(100))
    assert torch.equal(p, permutation(100, 3))
    assert not torch.equal(p, permutation(100, 4))


def test_sensitivity_batch_stable_and_seeded(digits):
    x1, y1 = sensitivity_batch(digits.train, 2, 32, seed=0)
    x2, y2 = sensitivity_batch(digits.train, 2, 32, seed=0)
    assert x1.shape == (32, 1, 8, 8) and y1.shape == (32,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = sensitivity_batch(digits.train, 2, 32, seed=1)
    assert not torch.equal(x1, x3)
    idx = permutation(len(digits.train), 0)[64:96]
    assert torch.equal(x1, digits.train.images[idx])


def test_sensitivity_batches_disjoint(digits):
    perm = permutation(len(digits.train), 7)
    seen = set()
    for k in range(4):
        x, y = sensitivity_batch(digits.train, k, 50, seed=7)
        idx = perm[k * 50 : (k + 1) * 50].tolist()
        assert torch.equal(x, digits.train.images[idx])
        assert not seen & set(idx)
        seen |= set(idx)
    assert len(seen) == 200


def test_sensitivity_batch_beyond_data(digits):
    assert num_batches(digits.train, 64) == 1347 // 64 == 21
    sensitivity_batch(digits.train, 20, 64, seed=0)
    msg = r"batch 21 needs images 1344\.\.1407; the training split has 1347 images \(21 full batches of 64\)"
    with pytest.raises(InputError, match=msg):
        sensitivity_batch(digits.train, 21, 64, seed=0)


def test_sensitivity_batch_file_backed_matches_items(tmp_path):
    _imagenet_tree(tmp_path)
    d = load_data(f"imagefolder:{tmp_path}", image_size=16, eval_split="train")
    perm = permutation(len(d.train), 5)
    x, y = sensitivity_batch(d.train, 0, 4, seed=5)
    assert torch.equal(x, torch.stack([d.train[i][0] for i in perm[:4].tolist()]))
    assert y.tolist() == [d.train[i][1] for i in perm[:4].tolist()]


def test_workers_give_the_same_batches(tmp_path):
    _imagenet_tree(tmp_path)
    d = load_data(f"imagefolder:{tmp_path}", image_size=16, eval_split="val")
    plain = list(calibration_batches(d.train, 5, 2, seed=0))
    loaded = list(calibration_batches(d.train, 5, 2, seed=0, workers=2))
    assert [x.shape[0] for x, _ in loaded] == [2, 2, 1]
    for (xa, ya), (xb, yb) in zip(plain, loaded):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xa, ya = sensitivity_batch(d.train, 1, 2, seed=0)
    xb, yb = sensitivity_batch(d.train, 1, 2, seed=0, workers=1)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_calibration_batches_come_from_the_permutations_tail_or_head(digits):
    from clado_cli.data.batches import split_overlaps

    n = len(digits.train)
    perm = permutation(n, 0)
    batches = list(calibration_batches(digits.train, 100, 32, seed=0))
    assert [b[0].shape[0] for b in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, digits.train.images[perm[n - 100:]])
    assert torch.equal(y, digits.train.labels[perm[n - 100:]])
    # tail (default): disjoint from the sensitivity batches while the split holds both
    assert split_overlaps(n, 32, 0, 3, 100, 0, "tail")["sensitivity_calibration_overlap"] == 0
    assert split_overlaps(n, 64, 0, 15, 1024, 0, "tail")["sensitivity_calibration_overlap"] == 1024 + 1024 - n
    # head (the release's): the same permutation's prefix, which overlaps batch 0 on
    head = torch.cat([b[0] for b in calibration_batches(digits.train, 100, 32, seed=0, position="head")])
    assert torch.equal(head[:32], sensitivity_batch(digits.train, 0, 32, seed=0)[0])
    assert split_overlaps(n, 32, 0, 3, 100, 0, "head")["sensitivity_calibration_overlap"] == 100


def test_calibration_larger_than_split(digits):
    n = sum(b[0].shape[0] for b in calibration_batches(digits.eval, 10_000, 128, seed=0))
    assert n == len(digits.eval)


def test_eval_batches_in_order(digits):
    batches = list(eval_batches(digits.eval, 100))
    assert [b[0].shape[0] for b in batches] == [100, 100, 100, 100, 50]
    assert torch.equal(torch.cat([b[0] for b in batches]), digits.eval.images)
    limited = list(eval_batches(digits.eval, 64, limit=70))
    assert [b[1].shape[0] for b in limited] == [64, 6]
    assert torch.equal(limited[1][1], digits.eval.labels[64:70])


def test_bad_batch_size(digits):
    with pytest.raises(UsageError):
        num_batches(digits.train, 0)
    with pytest.raises(UsageError):
        eval_batches(digits.eval, 0)


def test_synthetic_is_seeded_and_shaped():
    a, b = load_data("synthetic:3x13x11:7"), load_data("synthetic:3x13x11:7")
    assert a.input_shape == (3, 13, 11) and a.num_classes == 7
    assert torch.equal(a.train.images, b.train.images) and int(a.train.labels.max()) < 7
    with pytest.raises(UsageError, match="synthetic:CxHxW"):
        load_data("synthetic:3x13")

"""Image files on disk: `imagefolder:PATH` (ImageNet layout, labeled) and `images:PATH` (a tree
of unlabeled images), both with the deterministic ImageNet evaluation transform, and
`pseudo_label` to label the latter with a float model's predictions. Unless data.eval_split is train,
`images:` holds out a seeded quarter of its files for evaluation, and so does an imagefolder
without val/ of train/ (data/base.py, holdout_split)."""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from ..errors import InputError
from .base import DATASETS, DataSplits, Relabeled, TensorData, existing_dir, holdout_record, holdout_split

from .transform import IMAGENET_MEAN, IMAGENET_STD, Transform, resolve_transform  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def eval_transform(image_size: int) -> Callable:
    """The default: Resize(image_size * 256/224) + CenterCrop(image_size) + ToTensor +
    Normalize(ImageNet). Used for train and eval alike: no randomness, so a batch is the same
    pixels every run. A loader given a resolver uses its Transform instead."""
    return resolve_transform("images", image_size).pil()


def _resolved(kind: str, image_size: int, transform) -> Transform:
    return transform(None) if transform is not None else resolve_transform(kind, image_size)


def load_rgb(path: str):
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Image.DecompressionBombError as e:   # more pixels than PIL's safety limit
        raise InputError(f"cannot read image {path}: {e}") from None
    except OSError as e:  # includes PIL.UnidentifiedImageError and truncated files
        raise InputError(f"cannot read image {path}: {e}") from None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------- imagefolder


class _FixedClassesFolder(ImageFolder):
    """torchvision ImageFolder with the class list given (the training split's), so that class
    indices agree between splits even when a split lacks some class. Module-level so that
    DataLoader workers can pickle it."""

    def __init__(self, root: str, classes: List[str], transform: Callable):
        self._classes = list(classes)
        super().__init__(root, transform=transform, loader=load_rgb, allow_empty=True)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        return list(self._classes), {c: i for i, c in enumerate(self._classes)}


def _image_folder(root: str, classes: List[str], transform: Callable):
    return _FixedClassesFolder(root, classes, transform)


def _class_dirs(root: str) -> List[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


@DATASETS.register("imagefolder")
def load_imagefolder_splits(spec: str, path: Optional[str], image_size: int, eval_split: str,
                            transform=None) -> DataSplits:
    root = existing_dir("imagefolder", path)
    train_dir = os.path.join(root, "train")
    val_dir = os.path.join(root, "val")
    if not os.path.isdir(train_dir):
        raise InputError(f"imagefolder data at {path}: missing train/ (expected {path}/train/<class>/*.JPEG)")
    classes = _class_dirs(train_dir)
    if not classes:
        raise InputError(f"imagefolder data at {path}: train/ has no class folders (expected train/<class>/*.JPEG)")
    resolved = _resolved("imagefolder", image_size, transform)
    transform = resolved.pil()
    train = _image_folder(train_dir, classes, transform)
    if len(train) == 0:
        raise InputError(
            f"imagefolder data at {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in train/<class>/"
        )
    holdout = None
    if eval_split == "train":
        held_out = train
    elif not os.path.isdir(val_dir):
        # no val/: a seeded part of train/ is held out for evaluation (data/base.py)
        tr, ev = holdout_split(len(train), f"imagefolder data at {path} (no val/, so train/ is split)")
        train, held_out, holdout = Subset(train, tr), Subset(train, ev), holdout_record()
    else:
        extra = sorted(set(_class_dirs(val_dir)) - set(classes))
        if extra:
            raise InputError(
                f"imagefolder data at {path}: val/ has classes that train/ lacks: {', '.join(extra[:5])}"
                + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            )
        held_out = _image_folder(val_dir, classes, transform)
        if len(held_out) == 0:
            raise InputError(
                f"imagefolder data at {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in val/<class>/"
            )
    return DataSplits(
        spec=spec,
        train=train,
        eval=held_out,
        num_classes=len(classes),
        input_shape=resolved.output_shape(),
        labeled=True,
        transform=resolved,
        holdout=holdout,
    )


# ---------------------------------------------------------------------------- images


class ImageFiles(Dataset):
    """A fixed list of image files, unlabeled: items are `(image, -1)`."""

    def __init__(self, files: List[str], transform: Callable):
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.files[i])), -1


def list_images(root: str) -> List[str]:
    """Every image file under `root` (recursive), sorted by path relative to `root`. Links are
    followed only while they stay inside `root`, and each real directory is read once, so a
    link cycle neither loops nor counts images twice; a link leaving `root` is an error."""
    found = []
    real_root = os.path.realpath(root)
    seen = set()

    def inside(p: str) -> bool:
        return os.path.commonpath([real_root, os.path.realpath(p)]) == real_root

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for d in list(dirnames):
            if not inside(os.path.join(dirpath, d)):
                raise InputError(f"images:{root}: {os.path.join(dirpath, d)} links outside the data directory")
        dirnames.sort()
        for name in filenames:
            if _is_image(name):
                full = os.path.join(dirpath, name)
                if not inside(full):
                    raise InputError(f"images:{root}: {full} links outside the data directory")
                found.append((os.path.relpath(full, root), full))
    return [full for _, full in sorted(found)]


@DATASETS.register("images")
def load_images_splits(spec: str, path: Optional[str], image_size: int, eval_split: str,
                       transform=None) -> DataSplits:
    root = existing_dir("images", path)
    files = list_images(root)
    if not files:
        raise InputError(f"images data at {path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    resolved = _resolved("images", image_size, transform)
    if eval_split == "train":   # asked for: evaluate on the very files (an overlap, reported)
        train = held_out = ImageFiles(files, resolved.pil())
        holdout = None
    else:
        # a seeded quarter of the files is held out for evaluation (data/base.py, holdout_split),
        # so that evaluation never sees a sensitivity or calibration image
        tr, ev = holdout_split(len(files), f"images data at {path}")
        train = ImageFiles([files[i] for i in tr], resolved.pil())
        held_out = ImageFiles([files[i] for i in ev], resolved.pil())
        holdout = holdout_record()
    return DataSplits(
        spec=spec,
        train=train,
        eval=held_out,
        num_classes=None,
        input_shape=resolved.output_shape(),
        labeled=False,
        transform=resolved,
        holdout=holdout,
    )


# ---------------------------------------------------------------------------- pseudo labels


def pseudo_label(dataset: Dataset, model: torch.nn.Module, device="cpu", bs: int = 64, workers: int = 0) -> Dataset:
    """`dataset` with each label replaced by `model`'s argmax prediction on that image.
    The predictions are computed once, in order, in batches of `bs`, under torch.no_grad()
    with the model in eval mode (its previous mode is restored)."""
    from .batches import eval_batches

    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds = []
    try:
        with torch.no_grad():
            for x, _ in eval_batches(dataset, bs, None, workers=workers):
                preds.append(model(x.to(device)).argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    labels = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    if isinstance(dataset, TensorData):
        return TensorData(dataset.images, labels)
    if isinstance(dataset, Relabeled):
        return Relabeled(dataset.base, labels)
    return Relabeled(dataset, labels)

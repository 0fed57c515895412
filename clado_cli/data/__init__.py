"""Data sets behind one registry, and the batching that defines the sensitivity and
calibration sets (docs/methods.md, "Terms").

A spec string is `digits` or `KIND:PATH`:
  digits            scikit-learn's bundled 8x8 digits (no download)
  idx:PATH          MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not
  imagefolder:PATH  ImageNet layout PATH/train/<class>/*, PATH/val/<class>/*
  images:PATH       a tree of unlabeled images (labels -1; see pseudo_label)
  synthetic:CxHxW   seeded random images and labels (shapes and costs without real data)
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .base import (
    DATASETS,
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    DataSplits,
    Relabeled,
    TensorData,
    check_eval_split,
    holdout_split,
    parse_spec,
)
from . import digits as _digits  # noqa: F401  (registers "digits")
from . import idx as _idx  # noqa: F401  (registers "idx")
from . import folders as _folders  # noqa: F401  (registers "imagefolder", "images")
from . import synthetic as _synthetic  # noqa: F401  (registers "synthetic")
from .batches import (
    calibration_batches,
    calibration_indices,
    eval_batches,
    num_batches,
    permutation,
    sensitivity_batch,
)
from .folders import pseudo_label
from .transform import FILE_SOURCES, Transform, resolve_transform
from ..errors import UsageError

__all__ = [
    "DATASETS",
    "DataSplits",
    "TensorData",
    "HOLDOUT_FRACTION",
    "HOLDOUT_SEED",
    "holdout_split",
    "Relabeled",
    "load_data",
    "parse_spec",
    "pseudo_label",
    "permutation",
    "num_batches",
    "sensitivity_batch",
    "calibration_batches",
    "calibration_indices",
    "eval_batches",
    "FILE_SOURCES",
    "Transform",
    "resolve_transform",
]


def load_data(spec: str, image_size: int = 224, eval_split: str = "test",
              transform: Optional[Dict[str, Any]] = None, model_pre: Optional[Dict[str, Any]] = None) -> DataSplits:
    """Load the data set named by `spec`. `eval_split` picks the evaluation split: "test" or
    "val" -> the held-out split (digits/idx: the test part; imagefolder: val/), "train" -> the
    training split. images:PATH (and imagefolder:PATH without val/) hold out a seeded quarter of
    their files for evaluation (data/base.py, holdout_split) unless `eval_split` is "train".

    File-backed sources (idx, imagefolder, images) take a transform resolved from their default,
    `model_pre` (the model's own preprocessing) and `transform` (the keys set in data.transform);
    see data/transform.py. The result's `.transform` is that record (None for other sources)."""
    kind, path = parse_spec(spec)
    loader = DATASETS.get(kind)
    check_eval_split(eval_split)
    if int(image_size) <= 0:
        raise UsageError(f"image size must be positive, got {image_size}")
    if kind not in FILE_SOURCES:
        resolve_transform(kind, int(image_size), transform, model_pre)  # explicit keys here: a usage error
        return loader(spec.strip(), path, int(image_size), eval_split)

    def resolver(native=None):
        return resolve_transform(kind, int(image_size), transform, model_pre, native)

    splits = loader(spec.strip(), path, int(image_size), eval_split, transform=resolver)
    return splits

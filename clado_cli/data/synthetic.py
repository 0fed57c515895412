"""`synthetic:CxHxW[:classes]`: seeded Gaussian images with random labels, made by clado itself.

For shape and cost questions (`clado layers`, benchmarks, smoke tests of models from the wild)
where no real data is at hand: 512 training and 128 evaluation images, always the same ones.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from ..errors import UsageError
from .base import DATASETS, DataSplits, TensorData

_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)(?::(\d+))?$")
N_TRAIN, N_EVAL = 512, 128


@DATASETS.register("synthetic")
def load_synthetic_splits(spec: str, path: Optional[str], image_size: int, eval_split: str) -> DataSplits:
    m = _SHAPE.match((path or "").strip())
    if not m or min(int(g) for g in m.groups()[:3]) <= 0:
        raise UsageError(f"data set {spec!r}: use synthetic:CxHxW or synthetic:CxHxW:CLASSES, e.g. synthetic:3x64x64:10")
    c, h, w = (int(g) for g in m.groups()[:3])
    classes = int(m.group(4) or 10)
    if classes < 2:
        raise UsageError(f"data set {spec!r}: needs at least 2 classes")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_EVAL, c, h, w, generator=g)
    y = torch.randint(0, classes, (N_TRAIN + N_EVAL,), generator=g)
    train = TensorData(x[:N_TRAIN], y[:N_TRAIN])
    held = TensorData(x[N_TRAIN:], y[N_TRAIN:])
    return DataSplits(spec=spec, train=train, eval=train if eval_split == "train" else held,
                      num_classes=classes, input_shape=(c, h, w), labeled=True)

"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no
download), split 75/25 with a fixed, stratified split."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import DATASETS, DataSplits, TensorData, no_path

# Mean and (population) std of every pixel of the training split after scaling to [0, 1]
# (pixel / 16), computed once with
#   X = load_digits().data / 16
#   Xtr, *_ = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
#   Xtr.mean(), Xtr.std()
# and hard-coded so that the normalization never depends on anything computed at run time.
DIGITS_MEAN = 0.30522472
DIGITS_STD = 0.37600560

TEST_SIZE = 0.25
SPLIT_SEED = 0


def digits_arrays():
    """(x_train, y_train, x_test, y_test): x as float32 (N, 1, 8, 8) in [0, 1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def _normalized(x: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(x)) - DIGITS_MEAN) / DIGITS_STD


@DATASETS.register("digits")
def load_digits_splits(spec: str, path: Optional[str], image_size: int, eval_split: str) -> DataSplits:
    no_path("digits", path)
    x_tr, y_tr, x_te, y_te = digits_arrays()
    train = TensorData(_normalized(x_tr), torch.from_numpy(y_tr))
    held_out = TensorData(_normalized(x_te), torch.from_numpy(y_te))
    return DataSplits(
        spec=spec,
        train=train,
        eval=train if eval_split == "train" else held_out,
        num_classes=10,
        input_shape=(1, 8, 8),
        labeled=True,
    )

"""What every data set kind shares: the registry, the splits record, the in-memory data set,
and the checks on a spec's path."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import InputError, UsageError
from ..registry import Registry

# kind -> loader(spec: str, path: str | None, image_size: int, eval_split: str) -> DataSplits;
# file-backed kinds (data/transform.py FILE_SOURCES) also take transform=resolver, where
# resolver(native (C, H, W) or None) -> Transform
DATASETS: Registry = Registry("data set")

EVAL_SPLITS = ("test", "val", "train")

# A source without a held-out split of its own (images:PATH, imagefolder:PATH without val/)
# holds out this fraction of its files (rounded up) for evaluation, chosen by a permutation
# seeded with HOLDOUT_SEED: the same files on every machine, whatever data.seed says.
HOLDOUT_FRACTION = 0.25
HOLDOUT_SEED = 0


@dataclass
class DataSplits:
    """The two splits of one data set. Items of both are `(image float32 CHW, label int)`;
    label is -1 for unlabeled data."""

    spec: str
    train: Dataset
    eval: Dataset
    num_classes: Optional[int]
    input_shape: Tuple[int, int, int]
    labeled: bool
    # the resolved preprocessing of file-backed sources (data/transform.py); None for others
    transform: Optional[object] = None
    # a seeded held-out split cut by clado (holdout_split): {"fraction", "seed"}; part of the
    # cache fingerprint, since it decides which files are training images. None for sources
    # that come split (digits, idx, synthetic, imagefolder with val/)
    holdout: Optional[Dict[str, Any]] = None


class TensorData(Dataset):
    """Images and labels held as two tensors: `images` (N, C, H, W) float32 and `labels` (N,)
    int64. Batching indexes the tensors directly instead of stacking items."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images.to(torch.float32).contiguous()
        self.labels = labels.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class Relabeled(Dataset):
    """`base`'s images with the labels given here (used for pseudo-labels)."""

    def __init__(self, base: Dataset, labels: torch.Tensor):
        if len(base) != labels.shape[0]:
            raise ValueError(f"{len(base)} items but {labels.shape[0]} labels")
        self.base = base
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i][0], int(self.labels[i])


def holdout_split(n: int, what: str) -> Tuple[List[int], List[int]]:
    """(training indices, evaluation indices) of `n` items, each in ascending order: the first
    ceil(n * HOLDOUT_FRACTION) of a permutation seeded with HOLDOUT_SEED are held out."""
    if n < 2:
        raise InputError(f"{what}: {n} image{'s' if n != 1 else ''}; holding out a seeded "
                         f"{HOLDOUT_FRACTION:g} of them for evaluation needs at least 2")
    k = math.ceil(n * HOLDOUT_FRACTION)
    g = torch.Generator()
    g.manual_seed(HOLDOUT_SEED)
    perm = torch.randperm(n, generator=g).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def holdout_record() -> Dict[str, Any]:
    return {"fraction": HOLDOUT_FRACTION, "seed": HOLDOUT_SEED}


def parse_spec(spec: str) -> Tuple[str, Optional[str]]:
    """`digits` -> ("digits", None); `KIND:PATH` -> (KIND, PATH)."""
    spec = spec.strip()
    if not spec:
        raise UsageError(f"empty data set spec; use one of {', '.join(DATASETS.names())} (KIND or KIND:PATH)")
    kind, sep, path = spec.partition(":")
    return kind.strip(), (path.strip() if sep else None)


def check_eval_split(eval_split: str) -> str:
    if eval_split not in EVAL_SPLITS:
        raise UsageError(f"unknown eval split {eval_split!r}; use one of {', '.join(EVAL_SPLITS)}")
    return eval_split


def no_path(kind: str, path: Optional[str]) -> None:
    if path is not None:
        raise UsageError(f"data set {kind!r} takes no path (use plain {kind!r})")


def existing_dir(kind: str, path: Optional[str]) -> str:
    """The spec's path, expanded, checked to exist and to be a directory."""
    if path is None or not path:
        raise UsageError(f"data set {kind!r} needs a path: {kind}:PATH")
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise InputError(f"data path not found: {path}")
    if not os.path.isdir(full):
        raise InputError(f"data path is not a directory: {path}")
    return full


def first_existing(directory: str, names: Sequence[str]) -> Optional[str]:
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None

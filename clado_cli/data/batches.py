"""The batches that define clado's data sets of record (docs/methods.md, "Terms"):

- sensitivity set: batch k = training images perm[k*bs:(k+1)*bs] of a seeded permutation of the
  training split, full batches only, so batch k is the same images for every method and run;
- calibration set: the last `size` images of the same permutation ("tail", disjoint from the
  sensitivity batches; check_disjoint refuses a split too small for both), or the first ("head");
- evaluation: the evaluation split in order.

Items are stacked with torch.stack (or indexed directly for in-memory data); `workers > 0`
loads file-backed data through a DataLoader over a Subset instead."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import InputError, UsageError
from .base import TensorData

Batch = Tuple[torch.Tensor, torch.Tensor]


def permutation(n: int, seed: int) -> torch.Tensor:
    """A permutation of range(n), the same for the same (n, seed) on every machine."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return torch.randperm(int(n), generator=g)


def num_batches(train_ds: Dataset, bs: int) -> int:
    """How many full sensitivity batches of `bs` the training split holds."""
    _check_bs(bs)
    return len(train_ds) // bs


def sensitivity_batch(train_ds: Dataset, k: int, bs: int, seed: int, workers: int = 0) -> Batch:
    """Sensitivity batch k: (x, y) of the training images perm[k*bs:(k+1)*bs]."""
    n = _check_range(len(train_ds), k, k, bs)
    idx = permutation(n, seed)[k * bs : (k + 1) * bs]
    return next(_batched(train_ds, idx, bs, workers))


def _check_range(n: int, sb: int, eb: int, bs: int) -> int:
    """Check that batches sb..eb of size bs lie inside a split of n images; returns n."""
    _check_bs(bs)
    if sb < 0:
        raise InputError(f"batch index must be 0 or more, got {sb}")
    if (eb + 1) * bs > n:
        raise InputError(
            f"batch {eb} needs images {eb * bs}..{(eb + 1) * bs - 1}; the training split has {n} images "
            f"({n // bs} full batches of {bs})"
        )
    return n


def calibration_indices(n: int, size: int, seed: int, position: str = "tail") -> torch.Tensor:
    """Indices of the calibration images: the last min(size, n) of the seeded permutation
    ("tail", disjoint from the sensitivity batches, which come from its head, whenever the split
    holds both), or the first ("head", the release's choice, which overlaps batch 0 on)."""
    if size <= 0:
        raise UsageError(f"calibration size must be positive, got {size}")
    k = min(int(size), n)
    perm = permutation(n, seed)
    if position == "head":
        return perm[:k]
    if position != "tail":
        raise UsageError(f"calibration position must be head or tail, not {position!r}")
    return perm[n - k:]


def calibration_batches(train_ds: Dataset, size: int, bs: int, seed: int, workers: int = 0,
                        position: str = "tail") -> Iterator[Batch]:
    """The calibration images (see calibration_indices) in batches of `bs`; the last batch may
    be partial."""
    _check_bs(bs)
    return _batched(train_ds, calibration_indices(len(train_ds), size, seed, position), bs, workers)


def split_overlaps(n: int, bs: int, sb: int, eb: int, calibration_size: int, seed: int, position: str,
                   evaluation: Optional[int] = None) -> dict:
    """How many sensitivity images are also calibration images (docs/methods.md, "Terms"), and,
    when the evaluation set is the training split's first `evaluation` images (eval_split:
    train), how many of those are sensitivity or calibration images."""
    sens = set(permutation(n, seed)[sb * bs:(eb + 1) * bs].tolist())
    cal = set(calibration_indices(n, calibration_size, seed, position).tolist())
    out = {"sensitivity_images": len(sens), "calibration_images": len(cal),
           "sensitivity_calibration_overlap": len(sens & cal)}
    ev = set(range(min(n, evaluation))) if evaluation is not None else set()
    out["sensitivity_evaluation_overlap"] = len(sens & ev)
    out["calibration_evaluation_overlap"] = len(cal & ev)
    return out


def disjoint_batches(n: int, bs: int, calibration_size: int, position: str) -> int:
    """How many sensitivity batches (from the permutation's head) stay clear of the calibration
    images: all full batches under "head" (which overlaps by choice), else those before the
    tail's min(size, n) images."""
    _check_bs(bs)
    if position == "head":
        return n // bs
    return max(0, n - min(int(calibration_size), n)) // bs


def check_disjoint(n: int, bs: int, eb: int, calibration_size: int, position: str, what: str = "the training split") -> None:
    """Sensitivity batches 0..eb and the calibration tail must not share an image: a one-line
    error naming the counts and the ways out when `n` images cannot hold both."""
    if position != "tail":
        return
    sens, cal = (eb + 1) * bs, min(int(calibration_size), n)
    if sens + cal <= n:
        return
    fit = disjoint_batches(n, bs, calibration_size, position)
    ways = [f"lower eb to {fit - 1}" if fit else None,
            f"lower data.calibration_size to {n - sens}" if n > sens else None,
            "set data.allow_overlap: true (the overlap is then reported)"]
    raise UsageError(
        f"{what} has {n} images, too few to keep sensitivity batches 0..{eb} ({sens} images in batches of {bs}) "
        f"and {cal} calibration images apart ({sens + cal} needed): {', or '.join(w for w in ways if w)}",
        params=("eb",))


def eval_batches(eval_ds: Dataset, bs: int, limit: Optional[int] = None, workers: int = 0) -> Iterator[Batch]:
    """The evaluation split in order, at most `limit` images, in batches of `bs`."""
    _check_bs(bs)
    if limit is not None and limit <= 0:
        raise UsageError(f"evaluation limit must be positive, got {limit}")
    n = len(eval_ds) if limit is None else min(int(limit), len(eval_ds))
    return _batched(eval_ds, torch.arange(n), bs, workers)


# ---------------------------------------------------------------------------- internals


def _check_bs(bs: int) -> None:
    if int(bs) <= 0:
        raise UsageError(f"batch size must be positive, got {bs}")


def _stack(ds: Dataset, idx: Sequence[int]) -> Batch:
    xs, ys = [], []
    for i in idx:
        x, y = ds[int(i)]
        xs.append(x)
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _batched(ds: Dataset, idx: torch.Tensor, bs: int, workers: int = 0) -> Iterator[Batch]:
    """Batches of `bs` of ds[idx] in the order of `idx`."""
    if isinstance(ds, TensorData):
        for s in range(0, len(idx), bs):
            j = idx[s : s + bs]
            yield ds.images[j], ds.labels[j]
    elif workers > 0:
        loader = DataLoader(Subset(ds, idx.tolist()), batch_size=bs, shuffle=False, num_workers=workers)
        for x, y in loader:
            yield x, torch.as_tensor(y, dtype=torch.int64)
    else:
        for s in range(0, len(idx), bs):
            yield _stack(ds, idx[s : s + bs].tolist())

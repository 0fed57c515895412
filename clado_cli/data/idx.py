"""`idx:PATH`: MNIST-format (IDX) files, as MNIST and Fashion-MNIST ship them, gzipped or not.

The IDX format: two zero bytes, a type byte (0x08 = unsigned byte, ...), a byte with the number
of dimensions d, then d big-endian uint32 sizes, then the data in C order, big-endian."""
from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import InputError
from .base import DATASETS, DataSplits, TensorData, existing_dir, first_existing

from .transform import MNIST_MEAN, MNIST_STD, Transform, resolve_transform  # noqa: F401  (MNIST's usual normalization)

# a transform that changes the images' size or channels is applied on the fly (per batch of
# items) instead of up front when the transformed split would take more than this many bytes
EAGER_LIMIT = 1 << 30

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


MAX_IDX_BYTES = 2 * 2 ** 30  # 2 GiB: 40x MNIST, far beyond the image sets an IDX file holds


def read_idx(path: str, ndim: Optional[int] = None) -> np.ndarray:
    """Parse one IDX file (gzip detected by its magic bytes). Any damage -> InputError naming
    the file."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            # a gzip bomb stops at the cap instead of filling the memory
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(MAX_IDX_BYTES + 1)
            if len(raw) > MAX_IDX_BYTES:
                raise InputError(f"IDX file {path} unpacks to more than {MAX_IDX_BYTES // 2**30} GiB; refused")
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"corrupt IDX file {path}: {e}") from None
    if len(raw) < 4:
        raise InputError(f"corrupt IDX file {path}: truncated header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        magic = int.from_bytes(raw[:4], "big")
        raise InputError(f"corrupt IDX file {path}: bad magic number 0x{magic:08x}")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        expected = (0x0800 | ndim)
        raise InputError(
            f"IDX file {path} has {dims_n} dimensions (magic 0x{int.from_bytes(raw[:4], 'big'):08x}); "
            f"{name} should have {ndim} (magic 0x{expected:08x})"
        )
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise InputError(f"corrupt IDX file {path}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims_n, offset=4))
    dtype = _IDX_TYPES[raw[2]]
    need = math.prod(dims) * dtype.itemsize   # Python ints: a hostile header cannot overflow it
    have = len(raw) - header
    if have < need:
        raise InputError(f"corrupt IDX file {path}: truncated (data has {have} bytes, header says {need})")
    if have > need:
        raise InputError(f"corrupt IDX file {path}: {have - need} bytes beyond the size in its header")
    return np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(dims)


def _find(directory: str, spec_path: str, prefix: str, what: str, code: str) -> str:
    base = f"{prefix}-{what}-{code}-ubyte"
    alt = f"{prefix}-{what}.{code}-ubyte"  # some mirrors use a dot
    found = first_existing(directory, [base + ".gz", base, alt + ".gz", alt])
    if found is None:
        raise InputError(f"idx data at {spec_path}: missing {base}.gz (or un-gzipped {base})")
    return found


def _load_split(directory: str, spec_path: str, prefix: str) -> Tuple[np.ndarray, np.ndarray, str]:
    images_path = _find(directory, spec_path, prefix, "images", "idx3")
    labels_path = _find(directory, spec_path, prefix, "labels", "idx1")
    images = read_idx(images_path)
    if images.ndim not in (3, 4):
        read_idx(images_path, ndim=3)  # the error message for a wrong number of dimensions
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"idx data at {spec_path}: {os.path.basename(images_path)} has {images.shape[0]} images "
            f"but {os.path.basename(labels_path)} has {labels.shape[0]} labels"
        )
    if labels.size and labels.min() < 0:
        raise InputError(f"idx data at {spec_path}: negative label in {os.path.basename(labels_path)}")
    return images, labels, images_path


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) -> float32 (N, C, H, W), uint8 scaled to [0, 1]."""
    x = torch.from_numpy(images.astype(np.float32))
    if images.dtype == np.uint8:
        x = x / 255.0
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)


def _to_tensor(images: np.ndarray, t: Optional[Transform] = None) -> torch.Tensor:
    t = t if t is not None else resolve_transform("idx", native=_native(images))
    x = _pixels(images)
    out = []
    for s in range(0, x.shape[0], 4096):
        out.append(t.tensor(x[s: s + 4096]))
    return torch.cat(out) if out else x


class TransformedArrays(torch.utils.data.Dataset):
    """IDX images transformed one item at a time (for transforms whose output would not fit
    in memory at once, e.g. 28x28 images resized to 224x224 for an ImageNet model)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, t: Transform):
        self.images, self.labels, self.t = images, torch.from_numpy(labels.astype(np.int64)), t

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        return self.t.tensor(_pixels(self.images[i: i + 1]))[0], int(self.labels[i])


def _native(images: np.ndarray):
    c = 3 if images.ndim == 4 and images.shape[-1] == 3 else 1
    return (c, int(images.shape[1]), int(images.shape[2]))


def _dataset(images: np.ndarray, labels: np.ndarray, t: Transform):
    c, h, w = t.output_shape()
    if images.shape[0] * c * h * w * 4 > EAGER_LIMIT:
        return TransformedArrays(images, labels, t)
    return TensorData(_to_tensor(images, t), torch.from_numpy(labels.astype(np.int64)))


@DATASETS.register("idx")
def load_idx_splits(spec: str, path: Optional[str], image_size: int, eval_split: str, transform=None) -> DataSplits:
    directory = existing_dir("idx", path)
    tr_x, tr_y, _ = _load_split(directory, path, "train")
    if tr_x.ndim == 4 and tr_x.shape[-1] != 3:
        raise InputError(f"idx data at {path}: images of shape {tr_x.shape[1:]}; expected HxW or HxWx3")
    native = _native(tr_x)
    t = transform(native) if transform is not None else resolve_transform("idx", native=native)
    train = _dataset(tr_x, tr_y, t)
    labels = [tr_y]
    if eval_split == "train":
        held_out = train
    else:
        te_x, te_y, te_path = _load_split(directory, path, "t10k")
        if te_x.shape[1:] != tr_x.shape[1:]:
            raise InputError(
                f"idx data at {path}: {os.path.basename(te_path)} has images of {te_x.shape[1:]}, "
                f"the training images are {tr_x.shape[1:]}"
            )
        held_out = _dataset(te_x, te_y, t)
        labels.append(te_y)
    top = max((int(y.max()) for y in labels if y.size), default=-1)
    return DataSplits(
        spec=spec,
        train=train,
        eval=held_out,
        num_classes=top + 1 if top >= 0 else None,
        input_shape=t.output_shape(),
        labeled=True,
        transform=t,
    )

"""The one rule for a range of sensitivity batches (docs/methods.md, "Terms"), shared by the
config, prep, optimize and the data layer. No torch here: the config imports it."""
from __future__ import annotations

from typing import Optional

from .errors import UsageError


def check_batch_range(sb: int, eb: int, n_batches: Optional[int] = None, n_images: Optional[int] = None,
                      bs: Optional[int] = None) -> None:
    """The one rule for a range of sensitivity batches: 0 <= sb <= eb (< n_batches)."""
    if sb < 0:
        raise UsageError(f"sb ({sb}) must be 0 or more", params=("sb",))
    if sb > eb:
        raise UsageError(f"sb ({sb}) must not exceed eb ({eb})", params=("sb", "eb"))
    if n_batches is not None and eb >= n_batches:
        raise UsageError(f"eb {eb} is beyond the data: the training split has {n_images} images, {n_batches} full "
                         f"batches of {bs} (batches 0..{n_batches - 1})", params=("eb",))

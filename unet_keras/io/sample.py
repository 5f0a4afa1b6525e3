"""The two types every reader shares: a loaded `Sample` and the `DataError` raised on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file and the fix."""


# eq=False: comparing arrays element-wise has no single truth value.
@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One image, in its file's dtype, with its raw mask if it has one.

    `image` is (H, W, C), C = 1 for grey images; `mask` is (H, W) pixel values as read (see
    `mask_to_labels` for their classes), or None for images to predict on.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise DataError(f"sample {self.name}: image must be (H, W, C), got {self.image.shape}")
        if self.mask is not None and self.mask.shape != self.image.shape[:2]:
            raise DataError(
                f"sample {self.name}: mask must be (H, W) = {self.image.shape[:2]} like its "
                f"image, got {self.mask.shape}"
            )

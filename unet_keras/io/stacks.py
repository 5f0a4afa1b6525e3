"""A folder of image files read as one stack of sections, in name order, a few at a time.

A model with context (`ModelRecord.context_sections` K > 0) predicts each section with
the K sections above and below it (`unet_keras.io.context.with_context`). A folder's
sections are read when first needed and only the last 2K + 1 read are kept, so predicting
a folder in order holds 2K + 1 sections, not the whole stack.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unet_keras.io.readers import list_images, read_image
from unet_keras.io.sample import DataError


class FolderStack(Sequence):
    """The images of a folder (`list_images` order) as a sequence of (H, W, C) sections.

    Every section must have the first's size, channels and dtype: one that differs is a
    DataError naming it. `keep` sections are cached (the last read).
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 1) -> None:
        self.folder = Path(folder)
        self.files = list(list_images(self.folder).values())
        self._keep = max(1, keep)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._first: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.folder}: section {index} of {len(self)}")
        index %= len(self)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        section = read_image(self.files[index])
        if self._first is None:
            self._first = section if index == 0 else read_image(self.files[0])
        check_alike(section, self.files[index], self._first, self.files[0])
        self._cache[index] = section
        while len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return section


def check_alike(section: np.ndarray, path: object, first: np.ndarray, first_path: object) -> None:
    """A DataError naming `path` unless its section has the first's size, channels and dtype."""
    if section.shape != first.shape or section.dtype != first.dtype:
        raise DataError(
            f"{path} is {_kind(section)} but {first_path} is {_kind(first)}; the sections of "
            "a stack must share size, channels and dtype (the model sees neighbouring "
            "sections as channels)"
        )


def _kind(section: np.ndarray) -> str:
    """An (H, W, C) section's size, channels and dtype, like `64 x 80 x 1 uint8`."""
    return " x ".join(map(str, section.shape)) + f" {section.dtype}"

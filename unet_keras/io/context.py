"""Context from neighbouring sections: a section of a stack and the K sections above and
below it, given to the network as extra input channels.

An EM section's blurred or oblique stretch of membrane is often plain in the sections
beside it. Channels are ordered by offset, -K..K (the section itself in the middle), each
offset with the section's own channels; past the stack's ends the sections are mirrored
(section -1 is section 1), as pixels are mirrored past an image's border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unet_keras.geometry import mirror_index
from unet_keras.io.sample import DataError
from unet_keras.record import NormalizationConfig


def context_indices(count: int, index: int, k: int) -> list[int]:
    """The sections -K..K around `index` of a stack of `count`, mirrored at its ends."""
    return [int(i) for i in mirror_index(np.arange(index - k, index + k + 1), count)]


def with_context(sections: Sequence[np.ndarray] | np.ndarray, index: int, k: int) -> np.ndarray:
    """Section `index` of a stack of (H, W, C) sections with its K neighbours on each side
    as channels: (H, W, C * (2K + 1))."""
    if k == 0:
        return sections[index]
    return np.concatenate([sections[i] for i in context_indices(len(sections), index, k)], axis=-1)


def check_stack(count: int, k: int, source: str) -> None:
    """Raises a DataError naming `source` when a model with context gets a lone section."""
    if k and count < 2:
        raise DataError(
            f"{source}: a lone image, but the model sees {k} section(s) above and below "
            "each one (context_sections); give the stack: a multi-page TIFF, a folder of "
            "sections in name order, or a Zarr volume"
        )


def stacked_normalization(normalization: NormalizationConfig, k: int) -> NormalizationConfig:
    """A section's normalisation repeated for each of the 2K + 1 sections' channels."""
    return NormalizationConfig(
        normalization.method,
        tuple(normalization.offset) * (2 * k + 1),
        tuple(normalization.scale) * (2 * k + 1),
        normalization.input_dtype,
    )

"""A tiny U-Net that sees one section above and below each section (context_sections 1),
for the tests of prediction, evaluation, volumes and exports with context."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tests.serving_fixtures import ISBI_MASKS, TINY_NORMALIZATION
from unet_keras.io.context import stacked_normalization
from unet_keras.model import build_unet
from unet_keras.record import ModelConfig, ModelRecord, TileSizes
from unet_keras.saving import save_model

CONTEXT = ModelConfig(in_channels=3, filters=4, depth=2, padding="valid", dropout=0.0)


def save_context_unet(path: Path, seed: int = 7) -> Path:
    """The tiny K=1 U-Net (3 input channels: sections -1, 0, +1) saved with its record."""
    keras.utils.set_random_seed(seed)
    normalization = stacked_normalization(TINY_NORMALIZATION, 1)
    record = ModelRecord(ISBI_MASKS, normalization, CONTEXT, TileSizes(92, 52), None, "all", 1)
    save_model(build_unet(**CONTEXT.to_dict()), path, record)
    return path


def random_stack(count: int = 4, shape: tuple[int, int] = (45, 61), seed: int = 3) -> np.ndarray:
    """`count` random uint8 sections (count, H, W, 1) that differ from each other."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *shape, 1), dtype=np.uint8)


def explicit_context(stack: np.ndarray, index: int) -> np.ndarray:
    """Section `index` with sections index-1 and index+1 as channels, mirrored by hand."""
    last = len(stack) - 1
    above = 1 if index == 0 else index - 1
    below = last - 1 if index == last else index + 1
    return np.concatenate([stack[above], stack[index], stack[below]], axis=-1)

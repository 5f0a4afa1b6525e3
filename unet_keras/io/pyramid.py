"""Multiscale pyramids of OME-Zarr images, built level by level, block by block.

Level k+1 halves the rows and columns of level k (rounded up; sections and channels are
kept): the mean of each 2x2 for intensities and probabilities, the top-left pixel of
each 2x2 (nearest) for label images, whose values must stay ids or classes. A level is
read and written in blocks of whole chunks, so memory holds one block, never a level, and
is marked finished in the store's records once written: a rerun builds only the levels
not marked. A level's blocks are independent tasks (`run`): on a cluster, its workers
write them side by side.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from unet_keras.geometry import plan_blocks
from unet_keras.io.ome_zarr import OutputImage, is_finished, mark_finished

# Rows and columns of a coarser level written at a time (rounded up to whole chunks).
BLOCK = 1024


def build_pyramids(
    path: str | os.PathLike,
    images: list[OutputImage],
    run: Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]] | None = None,
) -> None:
    """Fills the coarser levels of each of `images` in the store at `path` from level 0;
    `run(function, arguments)` runs a level's blocks (default: here, one after another)."""
    import zarr

    run = run or (lambda function, arguments: [function(*args) for args in arguments])
    root = zarr.open_group(str(path), mode="r+")
    for image in images:
        group = root[image.name] if image.name else root
        attributes = group.attrs.asdict()
        multiscale = attributes.get("ome", attributes)["multiscales"][0]
        levels = [dataset["path"] for dataset in multiscale["datasets"]]
        for fine, coarse in itertools.pairwise(levels):
            step = f"pyramid {image.name or '/'}/{coarse}"
            if not is_finished(path, step):
                where = (str(path), image.name, fine, coarse, image.label)
                run(halve_block, [(*where, block) for block in blocks(group[coarse])])
                mark_finished(path, step)


def blocks(coarse: Any) -> list[tuple[tuple[int, int], ...]]:
    """The blocks of whole chunks a level is written in: one chunk of sections and
    channels, up to `BLOCK` rows and columns."""
    spans = [
        plan_blocks(size, chunk, chunk)
        for size, chunk in zip(coarse.shape[:-2], coarse.chunks[:-2], strict=True)
    ]
    spans += [
        plan_blocks(size, chunk, BLOCK)
        for size, chunk in zip(coarse.shape[-2:], coarse.chunks[-2:], strict=True)
    ]
    return list(itertools.product(*spans))


def halve_block(
    path: str, name: str, fine: str, coarse: str, nearest: bool, block: tuple[tuple[int, int], ...]
) -> None:
    """Writes one block of level `coarse` of image `name` from level `fine`, halved: a task
    that carries paths, never arrays."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    group = group[name] if name else group
    fine_array, coarse_array = group[fine], group[coarse]
    target = tuple(slice(start, stop) for start, stop in block)
    source = (*target[:-2], *(slice(2 * start, 2 * stop) for start, stop in block[-2:]))
    halved = downsample(np.asarray(fine_array[source]), nearest, coarse_array.dtype)
    coarse_array[target] = halved


def downsample(block: np.ndarray, nearest: bool, dtype: Any) -> np.ndarray:
    """`block` with its last two axes halved (rounded up): 2x2 means, or with `nearest`
    each 2x2's top-left pixel; integer means are rounded."""
    if nearest:
        return block[..., ::2, ::2].astype(dtype)
    height, width = block.shape[-2:]
    # An odd last row or column is its own 2x2's other half, as a mean of one pixel.
    pad = [(0, 0)] * (block.ndim - 2) + [(0, height % 2), (0, width % 2)]
    padded = np.pad(block.astype(np.float64), pad, mode="edge")
    shape = (*block.shape[:-2], padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2)
    mean = padded.reshape(shape).mean(axis=(-3, -1))
    if np.issubdtype(dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(dtype)

"""Where pixels go: the U-Net's size arithmetic, mirrored indices and tile plans.

One source for every stage that cuts images into pieces: the training pipeline (mirrored
context), `Segmenter` (network tiles), the export graph (the same tiles as TensorFlow ops)
and the client and volume prediction (windows that are predicted apart and stitched).
TF-free: the functions that graphs need take `xp`, the array module, which is NumPy by
default and `tensorflow` inside a graph (both offer `abs`, `maximum` and `where`).

Sizes. With valid padding the network is the paper's: unpadded 3x3 convolutions shrink
every feature map, so the output is smaller than the input by `context_margin` pixels on
each side (92 for depth 4: a 572x572 tile predicts its central 388x388), and only some
input sizes are workable. With same padding the output has the input's size, which must
be a multiple of `2**depth`.

Two levels of tiling:

- `plan_tiles` lays the network's own input tiles along an axis: for valid padding,
  output tiles edge to edge on the `2**depth` pooling grid, so the result equals one pass
  over the whole image; for same padding, overlapping tiles blended with Gaussian weights.
- `unet_keras.windows` cuts an image into windows that are each predicted as an image of
  their own (a gRPC request) and stitched, reaching `receptive_reach` pixels past the part
  kept, so a valid-padding model computes every kept pixel exactly as for the whole image.

A block of a chunked volume is predicted with the whole section's own tiles: `plan_blocks`
lays blocks on whole chunks, and `tiles_within` picks the tiles that write into a block,
whose results are then those of the whole section, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

PADDINGS = ("valid", "same")
# Each level's two unpadded 3x3 convolutions trim this many pixels from a feature map's size.
_CONV_TRIM = 4
# Default largest output tile side for valid padding (700-pixel input tiles at depth 4):
# a 512 x 512 section in one tile, and larger images in 512-pixel steps with no waste.
# Larger tiles also spend less of each tile on context than training's small tiles.
DEFAULT_OUTPUT_TILE = 516
# Default tile side for same padding, and the share of it that neighbouring tiles overlap.
DEFAULT_SAME_TILE = 512
DEFAULT_OVERLAP = 0.25


def check_depth(depth: int) -> None:
    """Raises a ValueError unless `depth` is a positive integer."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")


def check_padding(padding: str) -> None:
    """Raises a ValueError unless `padding` is 'valid' or 'same'."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def ceil_div(numerator: Any, denominator: Any) -> Any:
    """Integer division rounding up, for ints, NumPy arrays and tensors alike."""
    return -(-numerator // denominator)


def _input_from_bottom(bottom: Any, depth: int) -> Any:
    """Valid input size whose bottleneck (after its two convolutions) has size `bottom`."""
    scale = 2**depth
    return scale * (bottom + _CONV_TRIM) + _CONV_TRIM * (scale - 1)


def _output_from_bottom(bottom: Any, depth: int) -> Any:
    """Output size of the expanding path that starts from a bottleneck of size `bottom`."""
    scale = 2**depth
    return scale * bottom - _CONV_TRIM * (scale - 1)


def _smallest_bottom(depth: int) -> int:
    """Smallest bottleneck size that still leaves an output of at least one pixel."""
    scale = 2**depth
    return ceil_div(_CONV_TRIM * (scale - 1) + 1, scale)


def _bottom_for_output(n: Any, depth: int, xp: ModuleType = np) -> Any:
    """Smallest bottleneck size whose output is at least `n` pixels."""
    scale = 2**depth
    return xp.maximum(ceil_div(n + _CONV_TRIM * (scale - 1), scale), _smallest_bottom(depth))


def valid_outputs(depth: int = 4) -> tuple[int, int]:
    """(smallest, step): a valid-padding U-Net's output sides are smallest + k * step."""
    check_depth(depth)
    return int(_output_from_bottom(_smallest_bottom(depth), depth)), 2**depth


def context_margin(depth: int = 4) -> int:
    """Pixels a valid-padding U-Net loses on each side: 92 for depth 4, as in the paper."""
    check_depth(depth)
    return (_input_from_bottom(1, depth) - _output_from_bottom(1, depth)) // 2


def receptive_reach(depth: int = 4) -> int:
    """How far past a pixel its valid-padding prediction looks, at most: 107 for depth 4.

    `context_margin` (92) is the reach of a pixel at the start of a `2**depth` pooling
    cell; the last pixel of the cell sees `2**depth - 1` pixels further on one side.
    """
    return context_margin(depth) + 2**depth - 1


def valid_input_size(n: int, depth: int = 4) -> int:
    """Smallest input size of at least `n` that a valid-padding U-Net of `depth` accepts."""
    check_depth(depth)
    # Workable sizes are input(bottom), linear in bottom with slope 2**depth.
    bottom = ceil_div(n - _input_from_bottom(0, depth), 2**depth)
    return _input_from_bottom(max(bottom, _smallest_bottom(depth)), depth)


def input_size_for_output(n: int, depth: int = 4) -> int:
    """Smallest workable valid-padding input size whose output is at least `n` pixels."""
    check_depth(depth)
    return int(_input_from_bottom(_bottom_for_output(n, depth), depth))


def _smallest_input(depth: int, padding: str) -> int:
    """Smallest side length the U-Net accepts."""
    if padding == "same":
        return 2**depth
    return _input_from_bottom(_smallest_bottom(depth), depth)


def _is_workable(size: int, depth: int, padding: str) -> bool:
    if padding == "same":
        return size > 0 and size % 2**depth == 0
    return size > 0 and valid_input_size(size, depth) == size


def check_input_size(size: int | Sequence[int], depth: int = 4, padding: str = "valid") -> None:
    """Raises a ValueError naming the nearest workable sizes unless the U-Net accepts `size`.

    `size` is one side length or `(height, width)`; each side is checked on its own.
    """
    check_depth(depth)
    check_padding(padding)
    if isinstance(size, Sequence):
        if len(size) != 2:
            raise ValueError(f"input size must be one length or (height, width), got {size!r}")
        sides = list(zip(("height", "width"), size, strict=True))
    else:
        sides = [("size", size)]
    for name, side in sides:
        if int(side) != side:
            raise ValueError(f"input {name} must be an integer, got {side!r}")
        if not _is_workable(int(side), depth, padding):
            raise ValueError(_unworkable_message(name, int(side), depth, padding))


def _unworkable_message(name: str, size: int, depth: int, padding: str) -> str:
    """Names the workable sizes, and the nearest ones to `size`."""
    scale, first = 2**depth, _smallest_input(depth, padding)
    if padding == "same":
        above = max(first, ceil_div(size, scale) * scale)
    else:
        above = valid_input_size(size, depth)
    below = above - scale
    nearest = f"{below} or {above}" if below >= first else f"{above}"
    return (
        f"input {name} {size} does not fit a depth-{depth} U-Net with {padding} padding "
        f"(workable sizes: {first}, {first + scale}, {first + 2 * scale}, ...); "
        f"nearest workable: {nearest}"
    )


def output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output side length for an input side length; unworkable sizes raise a ValueError."""
    check_input_size(input_size, depth, padding)
    if padding == "same":
        return int(input_size)
    bottom = (int(input_size) - _input_from_bottom(0, depth)) // 2**depth
    return _output_from_bottom(bottom, depth)


def mirror_index(index: Any, size: Any, xp: ModuleType = np) -> Any:
    """Maps indices into [0, size) by mirroring about the end pixels (c b|a b c|b a).

    Like `np.pad(mode="reflect")`. Integer indices; with float coordinates the result is
    the mirrored coordinate for sizes above 1.
    """
    last = size - 1
    period = xp.maximum(2 * last, 1)
    folded = xp.abs(index) % period
    return xp.where(folded > last, period - folded, folded)


@dataclasses.dataclass(frozen=True)
class AxisTiles:
    """Where the network's tiles sit along one image axis.

    Output tile i starts at pixel `starts[i]` and is predicted from the input span that
    starts `margin` pixels before it and is `tile_in` long (mirrored beyond the image). It
    writes the pixels `[spans[i][0], spans[i][1])`, each times its weight in `weights[i]`
    (None: 1). The weights of every tile at a pixel add up to 1, so blended tiles need no
    final division.
    """

    size: int
    tile_in: int
    tile_out: int
    margin: int
    starts: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    weights: tuple[np.ndarray, ...] | None = None


def plan_tiles(
    size: int, depth: int, padding: str, tile: int | None = None, overlap: int = 0
) -> AxisTiles:
    """Plans the network's tiles along an axis of `size` pixels; `tile` is the input side."""
    if size < 1:
        raise ValueError(f"image side must be at least 1 pixel, got {size}")
    if padding == "valid":
        return _plan_valid(size, depth, largest_output_tile(depth, tile))
    return _plan_same(size, depth, tile or DEFAULT_SAME_TILE, overlap)


def largest_output_tile(depth: int, tile: int | None = None) -> int:
    """The output side of valid input tiles of `tile` pixels (default: DEFAULT_OUTPUT_TILE).

    Raises a ValueError when `tile` is not workable or too small to step along the grid.
    """
    if tile is None:
        return DEFAULT_OUTPUT_TILE
    largest = output_size(tile, depth)
    if largest < 2**depth:
        smallest = input_size_for_output(2**depth, depth)
        raise ValueError(
            f"tile {tile} predicts {largest} px, less than the {2**depth}-px pooling grid "
            f"that tiles step along; use a tile of at least {smallest}"
        )
    return largest


def valid_tiling(size: Any, depth: int, largest: int, xp: ModuleType = np) -> tuple[Any, ...]:
    """(count, tile_in, tile_out, step) of the valid tiles along an axis of `size` pixels.

    Output tiles of at most `largest` pixels start at multiples of `step`, a multiple of
    `2**depth`, so that every tile pools on the grid a whole-image pass would use: the
    result is then exactly the whole-image prediction. Workable output sides all leave the
    same remainder modulo `2**depth`, which neighbouring tiles overlap by. The tiles are
    the smallest workable ones that cover the axis with `count` tiles: an axis of 600
    pixels takes two tiles of 308 rather than two of 516. `xp=tf` computes it in a graph.
    """
    remainder = largest % 2**depth
    beyond = ceil_div(size - largest, largest - remainder) + 1
    count = xp.where(size <= largest, 1, beyond)
    needed = ceil_div(size + (count - 1) * remainder, count)
    bottom = _bottom_for_output(needed, depth, xp)
    tile_out = _output_from_bottom(bottom, depth)
    # A single tile smaller than the remainder would step by 0: it never steps, and 1
    # keeps `pixel // step` defined.
    step = xp.maximum(tile_out - remainder, 1)
    return count, _input_from_bottom(bottom, depth), tile_out, step


def _plan_valid(size: int, depth: int, largest: int) -> AxisTiles:
    """Output tiles edge to edge, each pixel written once, as few tiles as the size allows."""
    count, tile_in, tile_out, step = (int(v) for v in valid_tiling(size, depth, largest))
    starts = tuple(i * step for i in range(count))
    spans = tuple(zip(starts, (*starts[1:], size), strict=True))
    return AxisTiles(size, tile_in, tile_out, context_margin(depth), starts, spans)


def same_tiling(
    size: Any, depth: int, tile: int, overlap: int, xp: ModuleType = np
) -> tuple[Any, ...]:
    """(count, side, first, last) of the same-padding tiles along an axis of `size` pixels.

    The tiles reach `overlap / 2` beyond each border, which keeps the image's own edges off
    tile edges. Where that span fits one tile, it is one tile of the smallest multiple of
    `2**depth` that covers it, centred (the odd pixel goes below); else `count` tiles of
    `tile` pixels, the first starting at `first`, the last at `last` (`same_starts`).
    `xp=tf` computes it in a graph.
    """
    scale = 2**depth
    span = size + overlap
    single = span <= tile
    side = xp.where(single, xp.maximum(scale, ceil_div(span, scale) * scale), tile)
    count = xp.where(single, 1, ceil_div(span - tile, tile - overlap) + 1)
    first = xp.where(single, -((side - size) // 2), -(overlap // 2))
    last = xp.where(single, first, size + overlap - overlap // 2 - tile)
    return count, side, first, last


def same_starts(count: Any, first: Any, last: Any, xp: ModuleType = np) -> Any:
    """Where `count` same-padding tiles start: evenly from `first` to `last`, rounded half up
    in integers, so that a graph (`xp=tf`) places them exactly as NumPy does."""
    index = np.arange(count) if xp is np else xp.range(count)
    gaps = xp.maximum(count - 1, 1)
    return first + (2 * index * (last - first) + gaps) // (2 * gaps)


def same_blend_kernel(tile: int) -> np.ndarray:
    """The Gaussian that weighs a same-padding tile's pixels (float64, `tile` long).

    sigma = tile / 8 as in nnU-Net: the edges weigh exp(-8) of the centre, little but never
    zero, so a pixel seen by one tile only is still defined.
    """
    centre = (tile - 1) / 2
    return np.exp(-0.5 * ((np.arange(tile) - centre) / (tile / 8)) ** 2)


def _plan_same(size: int, depth: int, tile: int, overlap: int) -> AxisTiles:
    """Overlapping tiles spread evenly over the axis, mirrored `overlap / 2` beyond it,
    each pixel the Gaussian-weighted mean of the tiles that see it."""
    scale = 2**depth
    if tile % scale:
        raise ValueError(f"same-padding tiles must be a multiple of {scale}, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}) pixels for tile {tile}, got {overlap}")
    count, side, first, last = (int(v) for v in same_tiling(size, depth, tile, overlap))
    starts = tuple(int(start) for start in same_starts(count, first, last))
    gaussian = same_blend_kernel(side)
    spans = tuple((max(start, 0), min(start + side, size)) for start in starts)
    coverage = np.zeros(size)
    for start, (low, high) in zip(starts, spans, strict=True):
        coverage[low:high] += gaussian[low - start : high - start]
    weights = tuple(
        (gaussian[low - start : high - start] / coverage[low:high]).astype(np.float32)
        for start, (low, high) in zip(starts, spans, strict=True)
    )
    return AxisTiles(size, side, side, 0, starts, spans, weights)


def tiles_within(axis: AxisTiles, start: int, stop: int) -> list[int]:
    """The tiles along `axis` that write any pixel of [start, stop)."""
    return [i for i, (low, high) in enumerate(axis.spans) if low < stop and start < high]


def tile_input_index(axis: AxisTiles, tile: int) -> np.ndarray:
    """The input pixels tile `tile` reads along `axis`, mirrored beyond the axis's ends."""
    index = np.arange(axis.tile_in) + axis.starts[tile] - axis.margin
    return mirror_index(index, axis.size)


def same_overlap(tile: int | None, overlap: int | None) -> int:
    """The overlap of same-padding tiles: `overlap`, else a quarter of the tile (512 when
    none is given), as predict and the export graph both take it."""
    return int((tile or DEFAULT_SAME_TILE) * DEFAULT_OVERLAP) if overlap is None else overlap


def plan_blocks(size: int, chunk: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) of blocks of whole chunks along an axis: `block` pixels, rounded up to
    a multiple of `chunk`, so that no two blocks write into one chunk."""
    if chunk < 1 or block < 1:
        raise ValueError(f"chunk and block sides must be positive, got {chunk} and {block}")
    step = ceil_div(block, chunk) * chunk
    return [(start, min(start + step, size)) for start in range(0, size, step)]

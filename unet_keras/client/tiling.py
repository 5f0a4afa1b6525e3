"""Splitting an image too large for one gRPC message into tiles, and stitching the results.

Every tile is a window of the image that reaches `context` pixels past the part of it
that is kept (except at the image's own borders, which the server mirrors as it would for
the whole image), and starts on a multiple of `grid` pixels. The server then pools every
tile on the grid a whole-image request would use, so for a valid-padding U-Net each kept
pixel is computed exactly as in one request, provided `context` covers its receptive
field: `receptive_context` gives that size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def receptive_context(depth: int) -> int:
    """Context a valid-padding U-Net of `depth` needs on each side of a kept pixel (107 for 4).

    The network loses 6 * 2**depth - 4 pixels per side (92 for depth 4), but that is the
    reach of a pixel at the start of the 2**depth pooling grid: a pixel further along the
    grid sees up to 2**depth - 1 pixels more on one side, so a tile's kept part needs that
    much more than the margin to match a whole-image pass.
    """
    if depth < 1:
        raise ValueError(f"U-Net depth must be at least 1, got {depth}")
    return 6 * 2**depth - 4 + 2**depth - 1


@dataclass(frozen=True)
class Span:
    """One axis of a tile: the window sent, [start, stop), and the part kept of its result."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


@dataclass(frozen=True)
class Tile:
    """One tile of an image: its rows and columns."""

    rows: Span
    cols: Span

    @property
    def window(self) -> tuple[slice, slice]:
        """The image region sent for this tile."""
        return slice(self.rows.start, self.rows.stop), slice(self.cols.start, self.cols.stop)

    @property
    def kept(self) -> tuple[slice, slice]:
        """The image region this tile's result fills."""
        return (
            slice(self.rows.keep_start, self.rows.keep_stop),
            slice(self.cols.keep_start, self.cols.keep_stop),
        )

    @property
    def kept_in_window(self) -> tuple[slice, slice]:
        """The part of this tile's result that is kept, in the tile's coordinates."""
        return (
            slice(self.rows.keep_start - self.rows.start, self.rows.keep_stop - self.rows.start),
            slice(self.cols.keep_start - self.cols.start, self.cols.keep_stop - self.cols.start),
        )


def plan_axis(size: int, extent: int, context: int, grid: int) -> list[Span]:
    """Windows of at most `extent` pixels, starting on the grid, whose kept parts tile `size`."""
    if size <= extent:
        return [Span(0, size, 0, size)]
    if extent < 2 * context + grid:
        raise ValueError(
            f"tiles of {extent} pixels are too small for {context} pixels of context on "
            f"each side on a {grid}-pixel grid: raise the message size limit to allow at "
            f"least {2 * context + grid}-pixel tiles"
        )
    spans: list[Span] = []
    start = keep = 0
    while start + extent < size:
        keep_stop = start + extent - context
        spans.append(Span(start, start + extent, keep, keep_stop))
        keep = keep_stop
        # The latest grid start that still leaves `context` pixels before `keep`.
        start = (keep - context) // grid * grid
    spans.append(Span(start, size, keep, size))
    return spans


def whole(height: int, width: int) -> Tile:
    """The one tile that is the whole image."""
    return Tile(Span(0, height, 0, height), Span(0, width, 0, width))


def plan_tiles(height: int, width: int, max_pixels: int, context: int, grid: int) -> list[Tile]:
    """Tiles of at most `max_pixels` pixels each that cover a `height` x `width` image."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if height * width <= max_pixels:
        return [whole(height, width)]
    # Square tiles, unless one side of the image is narrower than a square tile: then
    # the whole of that side, and the rest of the budget along the other.
    short, long = sorted((height, width))
    short_extent = min(short, math.isqrt(max_pixels))
    long_extent = min(long, max_pixels // short_extent)
    row_extent, col_extent = (
        (short_extent, long_extent) if height <= width else (long_extent, short_extent)
    )
    rows = plan_axis(height, row_extent, context, grid)
    cols = plan_axis(width, col_extent, context, grid)
    return [Tile(r, c) for r in rows for c in cols]


def stitch(
    tiles: Sequence[Tile], results: Sequence[np.ndarray], height: int, width: int
) -> np.ndarray:
    """The kept parts of per-tile results ([h, w, ...] each) assembled into one array."""
    first = results[0]
    stitched = np.empty((height, width, *first.shape[2:]), first.dtype)
    for tile, result in zip(tiles, results, strict=True):
        stitched[tile.kept] = result[tile.kept_in_window]
    return stitched

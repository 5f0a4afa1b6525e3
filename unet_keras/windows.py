"""Windows of an image that are each predicted as an image of their own and stitched: the
client's answer to a message limit (`unet_keras.client`).

A window reaches `geometry.receptive_reach` pixels past the part kept (the margin plus one
grid cell less one) and starts on the `2**depth` grid, so a valid-padding model computes
every kept pixel exactly as for the whole image. TF-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Span:
    """One axis of a window: the pixels sent, [start, stop), and the part kept of its result."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


@dataclasses.dataclass(frozen=True)
class Window:
    """A window of an image that is predicted on its own: its rows and its columns."""

    rows: Span
    cols: Span

    @property
    def region(self) -> tuple[slice, slice]:
        """The image region predicted for this window."""
        return slice(self.rows.start, self.rows.stop), slice(self.cols.start, self.cols.stop)

    @property
    def kept(self) -> tuple[slice, slice]:
        """The image region this window's result fills."""
        return (
            slice(self.rows.keep_start, self.rows.keep_stop),
            slice(self.cols.keep_start, self.cols.keep_stop),
        )

    @property
    def kept_in_window(self) -> tuple[slice, slice]:
        """The part of this window's result that is kept, in the window's coordinates."""
        return (
            slice(self.rows.keep_start - self.rows.start, self.rows.keep_stop - self.rows.start),
            slice(self.cols.keep_start - self.cols.start, self.cols.keep_stop - self.cols.start),
        )


def plan_windows(size: int, extent: int, context: int, grid: int) -> list[Span]:
    """Windows of at most `extent` pixels, starting on the grid, whose kept parts tile `size`.

    Each kept part has `context` pixels of the image before and after it inside its window,
    except at the image's own ends, where the model mirrors as it would for the whole image.
    """
    if size <= extent:
        return [Span(0, size, 0, size)]
    if extent < 2 * context + grid:
        raise ValueError(
            f"windows of {extent} pixels are too small for {context} pixels of context on "
            f"each side on a {grid}-pixel grid: allow at least {2 * context + grid}-pixel "
            "windows (for requests: raise the message size limit)"
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


def whole_image(height: int, width: int) -> Window:
    """The one window that is the whole image."""
    return Window(Span(0, height, 0, height), Span(0, width, 0, width))


def plan_image_windows(
    height: int, width: int, max_pixels: int, context: int, grid: int
) -> list[Window]:
    """Windows of at most `max_pixels` pixels each that cover a `height` x `width` image."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if height * width <= max_pixels:
        return [whole_image(height, width)]
    # Square windows, unless one side of the image is narrower than a square window: then
    # the whole of that side, and the rest of the budget along the other.
    short, long = sorted((height, width))
    short_extent = min(short, math.isqrt(max_pixels))
    long_extent = min(long, max_pixels // short_extent)
    row_extent, col_extent = (
        (short_extent, long_extent) if height <= width else (long_extent, short_extent)
    )
    rows = plan_windows(height, row_extent, context, grid)
    cols = plan_windows(width, col_extent, context, grid)
    return [Window(r, c) for r in rows for c in cols]


def stitch(
    windows: Sequence[Window], results: Sequence[np.ndarray], height: int, width: int
) -> np.ndarray:
    """The kept parts of per-window results ([h, w, ...] each) assembled into one array."""
    first = results[0]
    stitched = np.empty((height, width, *first.shape[2:]), first.dtype)
    for window, result in zip(windows, results, strict=True):
        stitched[window.kept] = result[window.kept_in_window]
    return stitched

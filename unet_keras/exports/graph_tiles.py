"""The overlap-tile plan of `unet_keras.geometry` as TensorFlow graph ops: where the export
graph cuts its tiles, and how it blends them, exactly as `Segmenter` does in NumPy."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from unet_keras.geometry import (
    context_margin,
    mirror_index,
    same_blend_kernel,
    same_starts,
    same_tiling,
    valid_tiling,
)


class GraphAxis(NamedTuple):
    """One axis's tile plan as tensors: `geometry.plan_tiles` in graph ops.

    Tile i reads `tile_in` pixels from `starts[i] - margin` (mirrored) and writes its
    output, from `starts[i]` on, into `span(i)`; for same padding times `weights(i)`.
    """

    size: tf.Tensor
    count: tf.Tensor
    tile_in: tf.Tensor
    starts: tf.Tensor
    stops: tf.Tensor
    margin: int
    blend: tf.Tensor | None = None
    coverage: tf.Tensor | None = None

    @classmethod
    def valid(cls, size: tf.Tensor, depth: int, largest: int) -> GraphAxis:
        """Valid output tiles of at most `largest` pixels, edge to edge."""
        count, tile_in, _, step = valid_tiling(size, depth, largest, tf)
        starts = tf.range(count) * step
        stops = tf.concat([starts[1:], [size]], 0)
        return cls(size, count, tile_in, starts, stops, context_margin(depth))

    @classmethod
    def same(cls, size: tf.Tensor, depth: int, tile: int, overlap: int) -> GraphAxis:
        """Overlapping same-padding tiles and the coverage their Gaussians add up to."""
        count, side, first, last = same_tiling(size, depth, tile, overlap, tf)
        starts = same_starts(count, first, last, tf)
        # Several tiles are all `tile` long and share its Gaussian (the very float64 values
        # NumPy's plan uses); a lone, smaller tile weighs 1 everywhere, as g / g is exactly 1.
        blend = tf.cond(
            count > 1,
            lambda: tf.constant(same_blend_kernel(tile), tf.float64),
            lambda: tf.ones([side], tf.float64),
        )
        axis = cls(size, count, side, starts, tf.minimum(starts + side, size), 0, blend)

        def add(i: tf.Tensor, coverage: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            low, high = axis.span(i)
            pixels = tf.range(low, high)[:, tf.newaxis]
            kernel = blend[low - starts[i] : high - starts[i]]
            return i + 1, tf.tensor_scatter_nd_add(coverage, pixels, kernel)

        # Tile by tile in order, as NumPy adds them: float sums depend on the order.
        _, coverage = tf.while_loop(
            lambda i, _: i < count, add, [tf.constant(0), tf.zeros([size], tf.float64)]
        )
        return axis._replace(coverage=coverage)

    def span(self, tile: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """[start, stop) of the pixels `tile` writes."""
        return tf.maximum(self.starts[tile], 0), self.stops[tile]

    def weights(self, tile: tf.Tensor) -> tf.Tensor:
        """Same padding: the float32 weight of each pixel `tile` writes, as NumPy's plan."""
        low, high = self.span(tile)
        start = self.starts[tile]
        kernel = self.blend[low - start : high - start]
        return tf.cast(kernel / self.coverage[low:high], tf.float32)

    def input_index(self) -> tf.Tensor:
        """Input pixel indices [count, tile_in] of each tile, mirrored."""
        begin = self.starts - self.margin
        index = begin[:, tf.newaxis] + tf.range(self.tile_in)[tf.newaxis]
        return mirror_index(index, self.size, tf)


def gather_windows(
    image: tf.Tensor,
    image_of: tf.Tensor,
    row_of: tf.Tensor,
    col_of: tf.Tensor,
    rows: GraphAxis,
    cols: GraphAxis,
) -> tf.Tensor:
    """The mirrored input windows [k, tile_in, tile_in, C] of k tiles, from raw image."""
    row_index = tf.gather(rows.input_index(), row_of)  # [k, tile_in]
    col_index = tf.gather(cols.input_index(), col_of)
    shape = tf.stack([tf.size(image_of), rows.tile_in, cols.tile_in])
    indices = tf.stack(
        [
            tf.broadcast_to(image_of[:, tf.newaxis, tf.newaxis], shape),
            tf.broadcast_to(row_index[:, :, tf.newaxis], shape),
            tf.broadcast_to(col_index[:, tf.newaxis, :], shape),
        ],
        axis=-1,
    )
    return tf.gather_nd(image, indices)

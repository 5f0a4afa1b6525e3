"""Elastic deformation as in the U-Net paper, as TensorFlow ops that run inside `tf.data`.

Random displacement vectors on a coarse grid are interpolated to a smooth per-pixel field
with cubic B-splines, exactly as `elasticdeform.deform_grid` does (control points spread
from the first to the last pixel, spline prefilter, mirror boundary). Pixels are then
resampled at the displaced coordinates: images linearly or with cubic B-splines, label maps
by nearest neighbour so no class is invented. Coordinates outside the image are mirrored,
which is also how a tile takes context beyond the image border (the overlap-tile strategy).

Everything here is a pure TensorFlow graph: no `py_function`, so `tf.data` runs it on all
cores. `elasticdeform_reference` wraps elasticdeform itself, the second backend.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# The cubic B-spline prefilter is an IIR filter with pole z = sqrt(3) - 2; its impulse
# response sqrt(3) * z**|k| is below 1e-7 beyond 13 taps, so a 27-tap FIR is exact to float32.
_SPLINE_POLE = math.sqrt(3.0) - 2.0
_PREFILTER_TAPS = 13


def _bspline3(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel."""
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def mirror_index_numpy(index: np.ndarray, size: int) -> np.ndarray:
    """Maps integer indices into [0, size) by mirroring about the end pixels (c b|a b c|b a)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def _spline_sampling_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """Rows of cubic B-spline weights over `size` coefficients, mirror boundary."""
    matrix = np.zeros((len(positions), size))
    first = np.floor(positions).astype(int) - 1
    for offset in range(4):
        knots = first + offset
        weights = _bspline3(positions - knots)
        np.add.at(matrix, (np.arange(len(positions)), mirror_index_numpy(knots, size)), weights)
    return matrix


def grid_interpolation_matrix(points: int, size: int) -> np.ndarray:
    """Matrix [size, points] that turns `points` control values into `size` pixel values.

    Control point i sits at pixel i * (size - 1) / (points - 1), as in elasticdeform; the
    values are interpolated by a prefiltered cubic B-spline, so the curve passes through them.
    """
    positions = np.arange(size) * (points - 1) / max(size - 1, 1)
    at_pixels = _spline_sampling_matrix(positions, points)
    at_knots = _spline_sampling_matrix(np.arange(points, dtype=float), points)
    return (at_pixels @ np.linalg.inv(at_knots)).astype(np.float32)


def dense_displacement(grid: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Interpolates a coarse displacement grid [2, gh, gw] to a per-pixel field [H, W, 2]."""
    rows = tf.constant(grid_interpolation_matrix(int(grid.shape[1]), height))
    cols = tf.constant(grid_interpolation_matrix(int(grid.shape[2]), width))
    return tf.einsum("hg,dgk,wk->hwd", rows, tf.cast(grid, tf.float32), cols)


def random_displacement_grid(
    seed: tf.Tensor, points: tuple[int, int] = (3, 3), sigma: float = 10.0
) -> tf.Tensor:
    """Draws the paper's random displacements: [2, gh, gw], normal with std `sigma` pixels."""
    return tf.random.stateless_normal((2, *points), seed=seed, stddev=sigma)


def _mirror(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Mirrors float coordinates into [0, size - 1] about the end pixels."""
    last = tf.cast(tf.maximum(size - 1, 1), coordinate.dtype)
    folded = tf.math.floormod(tf.abs(coordinate), 2 * last)
    folded = tf.where(folded > last, 2 * last - folded, folded)
    return tf.where(size > 1, folded, tf.zeros_like(folded))


def mirror_index(index: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Mirrors integer indices into [0, size - 1] about the end pixels."""
    period = tf.maximum(2 * size - 2, 1)
    folded = tf.math.floormod(tf.abs(index), period)
    return tf.where(folded >= size, period - folded, folded)


_TAPS = {"linear": (0, 1), "cubic": (-1, 0, 1, 2)}


def _taps(interpolation: str) -> tuple[int, ...]:
    """Neighbour offsets an interpolation reads along each axis, relative to floor(c)."""
    if interpolation not in _TAPS:
        raise ValueError(f"interpolation must be one of {sorted(_TAPS)}, got {interpolation!r}")
    return _TAPS[interpolation]


def column_stencil(image: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Packs each pixel's horizontal neighbours: [H, W, C] -> [H, W, taps * C].

    Gathers dominate resampling; with the neighbours side by side, one gather per row tap
    reads all of them (2 gathers for linear, 4 for cubic, instead of 4 and 16).
    """
    width = tf.shape(image)[1]
    neighbours = [
        tf.gather(image, mirror_index(tf.range(width) + k, width), axis=1)
        for k in _taps(interpolation)
    ]
    return tf.concat(neighbours, axis=-1)


def gather_neighbourhood(
    stencil: tf.Tensor, coords: tf.Tensor, interpolation: str = "linear"
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Reads the taps x taps neighbours of each coordinate from a `column_stencil`.

    coords [h, w, 2] are float (row, col) pixel positions, mirrored into the image. Returns
    values [h, w, taps, taps, C] and the fractional row and column offsets [h, w].
    """
    taps = _taps(interpolation)
    height, width = tf.shape(stencil)[0], tf.shape(stencil)[1]
    row = _mirror(coords[..., 0], height)
    col = _mirror(coords[..., 1], width)
    row0, col0 = tf.floor(row), tf.floor(col)
    first_row, first_col = tf.cast(row0, tf.int32), tf.cast(col0, tf.int32)
    flat = tf.reshape(stencil, (height * width, -1))
    rows = [tf.gather(flat, mirror_index(first_row + k, height) * width + first_col) for k in taps]
    values = tf.stack(rows, axis=-2)  # [h, w, taps, taps * C]
    shape = tf.concat([tf.shape(values)[:3], [len(taps), -1]], axis=0)
    return tf.reshape(values, shape), row - row0, col - col0


def _tap_weights(frac: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Interpolation weights [..., taps] for fractional offsets in [0, 1)."""
    if interpolation == "linear":
        return tf.stack([1.0 - frac, frac], axis=-1)
    rest = 1.0 - frac  # cubic B-spline weights of the taps -1, 0, 1, 2
    return tf.stack(
        [rest**3 / 6, 2 / 3 - frac**2 + frac**3 / 2, 2 / 3 - rest**2 + rest**3 / 2, frac**3 / 6],
        axis=-1,
    )


def interpolate(
    values: tf.Tensor,
    row_frac: tf.Tensor,
    col_frac: tf.Tensor,
    interpolation: str,
    gathered_with: str = "linear",
) -> tf.Tensor:
    """Combines a `gather_neighbourhood` into [h, w, C] by "nearest", "linear" or "cubic".

    `gathered_with` names the interpolation the neighbourhood was gathered for: a cubic
    neighbourhood also serves linear and nearest, so the channels of one gather can each
    use their own interpolation.
    """
    centre = _taps(gathered_with).index(0)
    if interpolation == "cubic":
        if gathered_with != "cubic":
            raise ValueError("cubic interpolation needs a neighbourhood gathered for 'cubic'")
        row_weights = _tap_weights(row_frac, "cubic")
        col_weights = _tap_weights(col_frac, "cubic")
        return tf.einsum("hwr,hwrtc,hwt->hwc", row_weights, values, col_weights)
    pair = values[:, :, centre : centre + 2, centre : centre + 2]
    if interpolation == "linear":
        row_weights = _tap_weights(row_frac, "linear")
        col_weights = _tap_weights(col_frac, "linear")
        return tf.einsum("hwr,hwrtc,hwt->hwc", row_weights, pair, col_weights)
    if interpolation == "nearest":
        # Half-way points go to the next pixel, like elasticdeform's floor(c + 0.5).
        row_pick = tf.where((row_frac >= 0.5)[..., None, None], pair[:, :, 1], pair[:, :, 0])
        return tf.where((col_frac >= 0.5)[..., None], row_pick[:, :, 1], row_pick[:, :, 0])
    raise ValueError(
        f"interpolation must be 'nearest', 'linear' or 'cubic', got {interpolation!r}"
    )


def sample(image: tf.Tensor, coords: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Resamples image [H, W, C] at float pixel coordinates [h, w, 2] (row, col), mirroring.

    `interpolation` is "nearest", "linear" or "cubic"; for "cubic" the image must already
    hold B-spline coefficients (`spline_prefilter`), as elasticdeform does internally.
    """
    if interpolation == "nearest":
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        rows = tf.cast(tf.floor(_mirror(coords[..., 0], height) + 0.5), tf.int32)
        cols = tf.cast(tf.floor(_mirror(coords[..., 1], width) + 0.5), tf.int32)
        return tf.gather(tf.reshape(image, (height * width, -1)), rows * width + cols)
    stencil = column_stencil(image, interpolation)
    values, row_frac, col_frac = gather_neighbourhood(stencil, coords, interpolation)
    return interpolate(values, row_frac, col_frac, interpolation, interpolation)


def spline_prefilter(image: tf.Tensor) -> tf.Tensor:
    """Turns image [H, W, C] into cubic B-spline coefficients (mirror boundary), per channel."""
    taps = np.arange(-_PREFILTER_TAPS, _PREFILTER_TAPS + 1)
    kernel = (math.sqrt(3.0) * _SPLINE_POLE ** np.abs(taps)).astype(np.float32)
    planes = tf.transpose(image, (2, 0, 1))[..., None]  # [C, H, W, 1]: channels as a batch
    for axis, kernel_shape in ((1, (-1, 1, 1, 1)), (2, (1, -1, 1, 1))):
        size = tf.shape(planes)[axis]
        extended = mirror_index(tf.range(-_PREFILTER_TAPS, size + _PREFILTER_TAPS), size)
        padded = tf.gather(planes, extended, axis=axis)
        planes = tf.nn.conv2d(padded, kernel.reshape(kernel_shape), strides=1, padding="VALID")
    return tf.transpose(planes[..., 0], (1, 2, 0))


def elastic_deform(image: tf.Tensor, grid: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Deforms a whole image [H, W, C] by a displacement grid [2, gh, gw], as elasticdeform.

    Equals `elasticdeform.deform_grid(image, grid, order, mode="mirror", axis=(0, 1))` with
    order 0, 1 or 3 for "nearest", "linear" or "cubic".
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    identity = tf.stack(
        tf.meshgrid(
            tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
        ),
        axis=-1,
    )
    coords = identity + dense_displacement(grid, height, width)
    source = spline_prefilter(image) if interpolation == "cubic" else image
    return sample(source, coords, interpolation)

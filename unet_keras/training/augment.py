"""Elastic deformation as in the U-Net paper, as TensorFlow ops that run inside `tf.data`.

Random displacement vectors on a coarse grid are interpolated to a smooth per-pixel field
with cubic B-splines, exactly as `elasticdeform.deform_grid` does (control points spread
from the first to the last pixel, spline prefilter, mirror boundary). Pixels are then
resampled at the displaced coordinates: images linearly or with cubic B-splines, label maps
by nearest neighbour so no class is invented. Coordinates outside the image are mirrored,
which is also how a tile takes context beyond the image border (the overlap-tile strategy).

Everything here is a pure TensorFlow graph: no `py_function`, so `tf.data` runs it on all
cores. The second backend, elasticdeform itself, runs in the training pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from unet_keras.geometry import mirror_index


def _bspline3(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel."""
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _spline_sampling_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """Rows of cubic B-spline weights over `size` coefficients, mirror boundary."""
    matrix = np.zeros((len(positions), size))
    first = np.floor(positions).astype(int) - 1
    for offset in range(4):
        knots = first + offset
        weights = _bspline3(positions - knots)
        np.add.at(matrix, (np.arange(len(positions)), mirror_index(knots, size)), weights)
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
    grid = tf.cast(grid, tf.float32)
    return tf.stack([rows @ grid[axis] @ tf.transpose(cols) for axis in (0, 1)], axis=-1)


def random_displacement_grid(
    seed: tf.Tensor, points: tuple[int, int] = (3, 3), sigma: float = 10.0
) -> tf.Tensor:
    """Draws the paper's random displacements: [2, gh, gw], normal with std `sigma` pixels."""
    return tf.random.stateless_normal((2, *points), seed=seed, stddev=sigma)


_TAPS = {"linear": (0, 1), "cubic": (-1, 0, 1, 2)}
INTERPOLATIONS = ("nearest", "linear", "cubic")


def _tap_weights(frac: tf.Tensor, interpolation: str) -> list[tf.Tensor]:
    """Interpolation weights of each tap for fractional offsets in [0, 1)."""
    if interpolation == "linear":
        return [1.0 - frac, frac]
    rest = 1.0 - frac  # cubic B-spline weights of the taps -1, 0, 1, 2
    return [rest**3 / 6, 2 / 3 - frac**2 + frac**3 / 2, 2 / 3 - rest**2 + rest**3 / 2, frac**3 / 6]


def _mirror_coordinate(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Mirrors float coordinates into [0, size - 1] about the end pixels (0 when size is 1)."""
    folded = mirror_index(coordinate, tf.cast(size, coordinate.dtype), tf)
    return tf.where(size > 1, folded, tf.zeros_like(folded))


def _resample(image: tf.Tensor, coords: tf.Tensor, modes: tuple[str, ...]) -> tf.Tensor:
    """Resamples image [H, W, C] at float (row, col) coordinates [h, w, 2], mirroring."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    row = _mirror_coordinate(coords[..., 0], height)
    col = _mirror_coordinate(coords[..., 1], width)
    row0, col0 = tf.floor(row), tf.floor(col)
    row_frac, col_frac = row - row0, col - col0
    first_row, first_col = tf.cast(row0, tf.int32), tf.cast(col0, tf.int32)
    # One flat plane per channel: XLA gathers single values many times faster than rows.
    planes = tf.reshape(tf.transpose(image, (2, 0, 1)), (len(modes), -1))
    offsets = sorted({k for mode in modes for k in _TAPS.get(mode, ())})
    row_starts = {k: mirror_index(first_row + k, height, tf) * width for k in offsets}
    cols = {k: mirror_index(first_col + k, width, tf) for k in offsets}
    channels = []
    for plane, mode in zip(tf.unstack(planes), modes, strict=True):
        if mode == "nearest":
            # Half-way points go to the next pixel, like elasticdeform's floor(c + 0.5);
            # the next pixel exists, as a mirrored coordinate at the last pixel has frac 0.
            nearest_row = first_row + tf.cast(row_frac >= 0.5, tf.int32)
            nearest_col = first_col + tf.cast(col_frac >= 0.5, tf.int32)
            channels.append(tf.gather(plane, nearest_row * width + nearest_col))
            continue
        taps = _TAPS[mode]
        row_weights = _tap_weights(row_frac, mode)
        col_weights = _tap_weights(col_frac, mode)
        channels.append(
            sum(
                row_weight
                * sum(
                    col_weight * tf.gather(plane, row_starts[r] + cols[c])
                    for c, col_weight in zip(taps, col_weights, strict=True)
                )
                for r, row_weight in zip(taps, row_weights, strict=True)
            )
        )
    return tf.stack(channels, axis=-1)


def _deform(
    image: tf.Tensor,
    grid: tf.Tensor,
    origin: tf.Tensor,
    shape: tuple[int, int],
    modes: tuple[str, ...],
) -> tf.Tensor:
    """The body of `deform`, before XLA compilation."""
    displacement = dense_displacement(grid, *shape)
    origin = tf.cast(origin, tf.float32)
    rows = tf.range(shape[0], dtype=tf.float32)[:, None] + origin[0] + displacement[..., 0]
    cols = tf.range(shape[1], dtype=tf.float32)[None, :] + origin[1] + displacement[..., 1]
    return _resample(image, tf.stack([rows, cols], axis=-1), modes)


# XLA fuses the many element-wise steps and gathers into a few loops: on a CPU this runs
# about 10x faster than the same ops one by one.
_deform_compiled = tf.function(_deform, jit_compile=True, autograph=False)


def _checked_modes(image: tf.Tensor, modes: Sequence[str]) -> tuple[str, ...]:
    """Returns `modes` as a tuple after checking there is one known mode per channel."""
    modes = tuple(modes)
    unknown = set(modes) - set(INTERPOLATIONS)
    if unknown or len(modes) != image.shape[-1]:
        raise ValueError(
            f"need one interpolation of {INTERPOLATIONS} per image channel "
            f"({image.shape[-1]}), got {modes}"
        )
    return modes


def deform(
    image: tf.Tensor,
    grid: tf.Tensor,
    modes: Sequence[str],
    origin: tf.Tensor | Sequence[int] = (0, 0),
    shape: tuple[int, int] | None = None,
) -> tf.Tensor:
    """Elastically deforms image [H, W, C] by a displacement grid [2, gh, gw].

    Output pixel (i, j) reads the image at origin + (i, j) + displacement(i, j), with the
    grid spread over the output (`shape`, by default the image's): a window of a larger
    image can be deformed without cutting it out first, its context mirrored at the
    image border. `modes[c]` is channel c's interpolation: "nearest" (labels: no class is
    invented), "linear", or "cubic" (the channel must hold B-spline coefficients, see
    `spline_prefilter`, as elasticdeform does internally).
    """
    modes = _checked_modes(image, modes)
    shape = tuple(int(v) for v in (shape or image.shape[:2]))
    origin = tf.convert_to_tensor(origin, tf.int32)
    return _deform_compiled(tf.cast(image, tf.float32), grid, origin, shape, modes)


def _solve_spline_system(values: tf.Tensor) -> tf.Tensor:
    """Solves for B-spline coefficients along axis 0 of [n, m] values (mirror boundary).

    Sampling a cubic B-spline at the knots is the tridiagonal map (1, 4, 1) / 6; mirroring
    doubles the inner neighbour at both ends.
    """
    size = tf.shape(values)[0]
    sixth = tf.fill([size], 1.0 / 6.0)
    ends = tf.one_hot([0, size - 1], size, on_value=1.0 / 6.0, off_value=0.0)
    diagonals = tf.stack(
        [sixth + ends[0], tf.fill([size], 4.0 / 6.0), sixth + ends[1]], axis=0
    )  # super-diagonal (last entry unused), diagonal, sub-diagonal (first entry unused)
    solved = tf.linalg.tridiagonal_solve(diagonals, values, diagonals_format="compact")
    return tf.where(size > 1, solved, values)


def spline_prefilter(image: tf.Tensor) -> tf.Tensor:
    """Turns image [H, W, C] into cubic B-spline coefficients (mirror boundary), per channel.

    Sampling the coefficients with cubic B-spline weights gives the image back exactly at
    the pixels: this is what makes cubic resampling interpolate rather than blur.
    """
    height, width, channels = tf.shape(image)[0], tf.shape(image)[1], tf.shape(image)[2]
    rows = _solve_spline_system(tf.reshape(image, (height, -1)))
    columns = tf.transpose(tf.reshape(rows, (height, width, channels)), (1, 0, 2))
    columns = _solve_spline_system(tf.reshape(columns, (width, -1)))
    return tf.transpose(tf.reshape(columns, (width, height, channels)), (1, 0, 2))


def elastic_deform(image: tf.Tensor, grid: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Deforms a whole image [H, W, C] by a displacement grid [2, gh, gw], as elasticdeform.

    Equals `elasticdeform.deform_grid(image, grid, order, mode="mirror", axis=(0, 1))` with
    order 0, 1 or 3 for "nearest", "linear" or "cubic".
    """
    source = spline_prefilter(image) if interpolation == "cubic" else image
    return deform(source, grid, (interpolation,) * int(image.shape[-1]))

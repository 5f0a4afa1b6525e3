"""Overlap-tile prediction for images of any size (Ronneberger et al. 2015, Fig. 2).

A valid-padding U-Net predicts the centre of each input tile; the `context_margin` around
it is context. Output tiles are laid edge to edge, so every pixel is predicted exactly once
with its full context, and where the context falls outside the image it is mirrored, as in
the paper. A same-padding U-Net predicts its whole tile but worse near the tile's edges
(zero padding), so its tiles overlap and are blended with Gaussian weights that fade
towards the edges.

Tiles are cut from the image through mirrored indices, one batch at a time: no padded or
normalised copy of the whole image is made, so memory beyond the image and the result is
bounded by the tile and batch sizes, not by the image size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unet_keras.geometry import (
    AxisTiles,
    plan_tiles,
    same_overlap,
    tile_input_index,
    tiles_within,
)
from unet_keras.io.masks import labels_to_mask
from unet_keras.io.normalization import normalize
from unet_keras.io.sample import DataError
from unet_keras.record import SYMMETRIES, ModelRecord, check_threshold

# The 8 symmetries of the square: (quarter turns, flip left-right).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def symmetry_group(symmetries: str) -> tuple[tuple[int, bool], ...]:
    """The symmetries of `DIHEDRAL` that a `ModelRecord.symmetries` value names."""
    flips, rotations = SYMMETRIES[symmetries]
    return tuple(
        (turns, flip)
        for turns, flip in DIHEDRAL
        if (flips or not flip) and (rotations or not turns)
    )


def dihedral(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """A view of an (H, W, ...) array under a symmetry of the square (flip, then turns)."""
    if flip:
        image = image[:, ::-1]
    return np.rot90(image, turns, axes=(0, 1))


class Segmenter:
    """Segments images of any size with a U-Net and the preprocessing it was trained with.

    `network` maps normalised float32 tiles [N, h, w, C] to probabilities, or with
    `raw_tiles` the tiles in the record's raw dtype (an ONNX export normalises them in its
    graph); see `from_model` and `from_path`. `record` is the `ModelRecord` stored with the model
    (normalisation, mask convention, model shape, chosen threshold). `tile` is the input tile side
    (default: 700 for valid padding at depth 4, 512 for same padding); `batch_size` tiles
    go through the model at once; `overlap` (same padding only) is the overlap of
    neighbouring tiles in pixels; `tta` averages the predictions of the image's flips
    and rotations that the model was trained with (`record.symmetries`: averaging over
    others would undo what the model learnt of the annotation's sub-pixel offset from the
    images); `threshold` turns a one-channel (sigmoid) model's probability into
    class 1 (default: the one chosen on the validation images after training, see
    `unet_keras.evaluation.calibration`, else 0.5).
    """

    def __init__(
        self,
        network: Callable,
        record: ModelRecord,
        *,
        tile: int | None = None,
        batch_size: int = 1,
        overlap: int | None = None,
        tta: bool = False,
        threshold: float | None = None,
        raw_tiles: bool = False,
    ) -> None:
        self.record = record
        self.model_config = record.model
        self.normalization = record.normalization
        self.mask_config = record.mask
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        check_threshold(threshold)
        if threshold is None:
            threshold = record.threshold_value
        self.tile, self.batch_size, self.tta, self.threshold = tile, batch_size, tta, threshold
        self.symmetries = symmetry_group(record.symmetries) if tta else DIHEDRAL[:1]
        if tta and len(self.symmetries) == 1:
            raise ValueError(
                "--tta: the model was trained without flips or rotations, so test-time "
                "augmentation has nothing to average; leave out --tta"
            )
        self.overlap = same_overlap(tile, overlap)
        if tile is not None:
            self._plan_axis(tile)  # rejects unworkable tiles now
        self._forward, self._raw_tiles = network, raw_tiles

    @classmethod
    def from_path(cls, path: str | os.PathLike, **options: object) -> Segmenter:
        """Loads a `.keras` file, the model a run directory kept, an exported version or an
        ONNX export (run by ONNX Runtime, without TensorFlow); `options` are the keyword
        arguments of `Segmenter` (tile, batch_size, overlap, tta, threshold)."""
        if Path(path).suffix == ".onnx":
            from unet_keras.inference.onnx_network import load_onnx

            network, record = load_onnx(path)
            return cls(network, record, raw_tiles=True, **options)
        from unet_keras.saving import load_network

        network, record = load_network(path)
        return cls(_traced(network, record), record, **options)

    @classmethod
    def from_model(cls, model: Any, record: ModelRecord, **options: object) -> Segmenter:
        """Wraps a Keras model (in inference mode) and its record; `options` as `from_path`."""
        return cls(_traced(lambda tiles: model(tiles, training=False), record), record, **options)

    @property
    def classes(self) -> int:
        """Channels of the probability maps: 1 (the foreground's) or the number of classes."""
        return self.model_config.classes

    @property
    def context_sections(self) -> int:
        """K: the sections above and below each section that the model sees beside it."""
        return self.record.context_sections

    def probabilities(
        self, image: np.ndarray, source: str = "image", progress: bool = False
    ) -> np.ndarray:
        """Predicts an (H, W, C) image in its raw dtype; returns (H, W, classes) float32."""
        self._check_image(image, source)
        result = np.zeros((*image.shape[:2], self.classes), np.float32)
        symmetries = self.symmetries
        plans = [self._plan(dihedral(image, *symmetry).shape) for symmetry in symmetries]
        total = sum(len(rows.starts) * len(cols.starts) for rows, cols in plans)
        with tqdm(total=total, disable=not progress, unit="tile", desc=source, leave=False) as bar:
            for symmetry, (rows, cols) in zip(symmetries, plans, strict=True):
                # Predicting the transformed image into the same view of `result` undoes
                # the transform for free: views of one array, no copies.
                view = dihedral(image, *symmetry)
                tiles = [(i, j) for i in range(len(rows.starts)) for j in range(len(cols.starts))]
                self._predict_into(
                    lambda i, j, view=view, rows=rows, cols=cols: self._cut(
                        view, rows, cols, i, j
                    ),
                    dihedral(result, *symmetry),
                    (0, 0),
                    rows,
                    cols,
                    tiles,
                    bar,
                )
        if self.tta:
            result /= len(symmetries)
        return result

    def region_probabilities(
        self,
        read: Callable[[int, int, int, int], np.ndarray],
        shape: tuple[int, int],
        rows: tuple[int, int],
        cols: tuple[int, int],
        source: str = "image",
    ) -> np.ndarray:
        """Predicts the region [rows) x [cols) of an (H, W) = `shape` image that is read in
        parts, bit for bit as `probabilities` predicts it within the whole image.

        `read(top, bottom, left, right)` returns those pixels (h, w, C) in the raw dtype. The
        region is predicted with the whole image's own tiles (those that write into it),
        each read with its context, so only the region and its context are ever in memory.
        """
        if self.tta:
            raise ValueError(
                f"{source}: test-time augmentation is not available for images predicted in "
                "parts (volumes); leave out --tta"
            )
        plan_rows, plan_cols = self._plan(shape)
        row_tiles = tiles_within(plan_rows, *rows)
        col_tiles = tiles_within(plan_cols, *cols)
        row_index = {i: tile_input_index(plan_rows, i) for i in row_tiles}
        col_index = {j: tile_input_index(plan_cols, j) for j in col_tiles}
        top = min(int(index.min()) for index in row_index.values())
        bottom = max(int(index.max()) for index in row_index.values()) + 1
        left = min(int(index.min()) for index in col_index.values())
        right = max(int(index.max()) for index in col_index.values()) + 1
        pixels = read(top, bottom, left, right)
        self._check_image(pixels, source)

        def cut(i: int, j: int) -> np.ndarray:
            return pixels[np.ix_(row_index[i] - top, col_index[j] - left)]

        result = np.zeros((rows[1] - rows[0], cols[1] - cols[0], self.classes), np.float32)
        tiles = [(i, j) for i in row_tiles for j in col_tiles]
        self._predict_into(cut, result, (rows[0], cols[0]), plan_rows, plan_cols, tiles, None)
        return result

    def _plan(self, shape: tuple[int, ...]) -> tuple[AxisTiles, AxisTiles]:
        """The tiles along the rows and the columns of an image of `shape`."""
        return self._plan_axis(shape[0]), self._plan_axis(shape[1])

    def _plan_axis(self, size: int) -> AxisTiles:
        """The tiles along an image axis of `size` pixels."""
        config = self.model_config
        return plan_tiles(size, config.depth, config.padding, self.tile, self.overlap)

    def _predict_into(
        self,
        cut: Callable[[int, int], np.ndarray],
        result: np.ndarray,
        origin: tuple[int, int],
        rows: AxisTiles,
        cols: AxisTiles,
        tiles: list[tuple[int, int]],
        bar: tqdm | None,
    ) -> None:
        """Adds the prediction of `tiles` into `result`, whose pixel (0, 0) is the image's
        `origin`, one batch of tiles at a time; each tile's input comes from `cut(i, j)`."""
        height, width = result.shape[:2]
        for batch in _chunks(tiles, self.batch_size):
            inputs = [cut(i, j) for i, j in batch]
            # Always whole batches (the last one filled up with copies): the network's
            # kernels round differently for other batch sizes. (With TensorFlow's own CPU
            # kernels, oneDNN off, the other tiles of a call were seen to move a few
            # probabilities by 1 ulp too: bit for bit needs one tile a call there.)
            inputs += inputs[-1:] * (self.batch_size - len(inputs))
            tiles = np.stack(inputs)
            if not self._raw_tiles:
                tiles = normalize(tiles, self.normalization)
            outputs = np.asarray(self._forward(tiles))
            for (i, j), output in zip(batch, outputs, strict=False):
                # The tile's own span, clipped to the part of the image `result` holds.
                top = max(rows.spans[i][0], origin[0])
                bottom = min(rows.spans[i][1], origin[0] + height)
                left = max(cols.spans[j][0], origin[1])
                right = min(cols.spans[j][1], origin[1] + width)
                row_offset, col_offset = top - rows.starts[i], left - cols.starts[j]
                output = output[
                    row_offset : row_offset + bottom - top, col_offset : col_offset + right - left
                ]
                if rows.weights is not None:
                    row_weights = rows.weights[i][
                        top - rows.spans[i][0] : bottom - rows.spans[i][0]
                    ]
                    col_weights = cols.weights[j][
                        left - cols.spans[j][0] : right - cols.spans[j][0]
                    ]
                    output = output * (row_weights[:, None] * col_weights)[..., None]
                result[
                    top - origin[0] : bottom - origin[0], left - origin[1] : right - origin[1]
                ] += output
            if bar is not None:
                bar.update(len(batch))

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices (H, W) int32 from `probabilities`."""
        if probabilities.shape[-1] == 1:
            return (probabilities[..., 0] >= self.threshold).astype(np.int32)
        return np.argmax(probabilities, axis=-1).astype(np.int32)

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """Mask pixel values in the training masks' convention (ISBI: 255 = cell interior)."""
        dtype = np.uint8 if max(self.mask_config.class_values) <= 255 else np.uint16
        return labels_to_mask(labels, self.mask_config, dtype)

    def _check_image(self, image: np.ndarray, source: str) -> None:
        """Raises a DataError naming `source` unless the image is like the training images."""
        channels = self.model_config.in_channels
        if image.ndim != 3 or image.shape[-1] != channels:
            k = self.context_sections
            context = (
                f" (a section of {self.record.section_channels} channel(s) with the {k} "
                "above and below it, `unet_keras.io.context.with_context`)"
                if k
                else ""
            )
            raise DataError(
                f"{source}: shape {image.shape}, but the model takes (H, W, {channels}) "
                f"images{context}"
            )
        normalize(image[:1, :1], self.normalization, source)  # checks the dtype

    def _cut(
        self, image: np.ndarray, rows: AxisTiles, cols: AxisTiles, i: int, j: int
    ) -> np.ndarray:
        """The input of tile (i, j), mirrored where it reaches beyond the image."""
        return image[np.ix_(tile_input_index(rows, i), tile_input_index(cols, j))]


def _traced(network: Callable, record: ModelRecord) -> Callable:
    """`network` as one TensorFlow graph for every tile shape: tracing again per shape
    costs more than it gains."""
    import tensorflow as tf

    signature = tf.TensorSpec([None, None, None, record.model.in_channels], tf.float32)
    return tf.function(network, input_signature=[signature], autograph=False)


def _chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of `items` of `size` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]

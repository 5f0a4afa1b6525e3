"""SavedModel export for TensorFlow Serving, with the preprocessing inside the graph.

A version directory holds one SavedModel with these signatures:

- `serving_default`: `image` [N, H, W, C] raw pixels in the training images' dtype, any H
  and W -> `probabilities` float32 [N, H, W, classes] and `mask` [N, H, W] in the training
  masks' value convention. The graph normalises as training did and, for valid padding,
  cuts mirrored tiles on the 2**depth grid, exactly as `Segmenter` does (both follow
  `unet_keras.geometry`), so it gives the same result; same padding pads the image to a
  workable size, mirrored.
- `segment_png`: `image_png` [N] PNG bytes (8- or 16-bit) -> `mask_png` [N] PNG bytes.
- `metadata`: no input -> `metadata`, the model's `ModelRecord` (normalisation, mask
  convention, model shape, tiles, threshold) as JSON text; also the asset `unet_keras.json`.
- `tiles`: `tiles` [N, h, w, C] normalised float32 tiles of workable size ->
  `probabilities`, the bare network, for clients that tile images themselves.

Only core TensorFlow ops: TF Serving runs the graph with no Python.

Versions are written to a hidden temporary directory beside the base path's numbered
versions and renamed into place, so a polling server never sees half a version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from unet_keras import contract
from unet_keras.config import DEFAULT_MAX_PIXELS, Calibration, ModelRecord
from unet_keras.contract import next_version
from unet_keras.geometry import context_margin, largest_output_tile, mirror_index, valid_tiling
from unet_keras.saving import load_model


class ServingModule(tf.Module):
    """The exported graph: a U-Net wrapped with its preprocessing and tiling.

    Its signatures and their inputs and outputs are the serving contract's
    (`unet_keras.contract`).
    """

    def __init__(
        self,
        model: keras.Model,
        record: ModelRecord,
        *,
        tile: int | None = None,
        tiles_per_call: int = 4,
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(name="unet_serving")
        self.model = model
        if threshold is not None:
            if not 0 < threshold < 1:
                raise ValueError(f"threshold must be in (0, 1), got {threshold}")
            chosen = Calibration(threshold, "set at export", (), {}, {})
            record = dataclasses.replace(record, threshold=chosen)
        self.record = record
        self._config = record.model
        normalization, mask = record.normalization, record.mask
        self._dtype = tf.as_dtype(normalization.input_dtype)
        self._offset = tf.constant(normalization.offset, tf.float32)
        self._scale = tf.constant(normalization.scale, tf.float32)
        self._mask_dtype = tf.uint8 if max(mask.class_values) <= 255 else tf.uint16
        self._class_values = tf.constant(mask.class_values, self._mask_dtype)
        self._largest = largest_output_tile(self._config.depth, tile)
        self._threshold = record.threshold_value
        self._tiles_per_call, self._max_pixels = tiles_per_call, max_pixels
        self.record_json = json.dumps(record.to_dict(), sort_keys=True)
        channels = self._config.in_channels
        image = tf.TensorSpec([None, None, None, channels], self._dtype, contract.IMAGE)
        pngs = tf.TensorSpec([None], tf.string, contract.IMAGE_PNG)
        tiles = tf.TensorSpec([None, None, None, channels], tf.float32, contract.TILES_INPUT)
        self.serve = tf.function(self._serve, input_signature=[image])
        self.segment_png = tf.function(self._segment_png, input_signature=[pngs])
        self.metadata = tf.function(self._metadata, input_signature=[])
        self.tiles = tf.function(self._tiles, input_signature=[tiles])

    def signatures(self) -> dict[str, Any]:
        """The signatures to save, by name."""
        return {
            contract.SEGMENT: self.serve.get_concrete_function(),
            contract.SEGMENT_PNG: self.segment_png.get_concrete_function(),
            contract.METADATA: self.metadata.get_concrete_function(),
            contract.TILES: self.tiles.get_concrete_function(),
        }

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.probabilities(image)
        return {contract.PROBABILITIES: probabilities, contract.MASK: self._mask(probabilities)}

    def _segment_png(self, image_png: tf.Tensor) -> dict[str, tf.Tensor]:
        def one(png: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_png(
                self._checked_png(png), channels=self._config.in_channels, dtype=self._dtype
            )
            # serving_default's function, stored once in the export.
            mask = self.serve(image[tf.newaxis])[contract.MASK][0]
            return tf.io.encode_png(mask[..., tf.newaxis])

        return {contract.MASK_PNG: tf.map_fn(one, image_png, fn_output_signature=tf.string)}

    def _metadata(self) -> dict[str, tf.Tensor]:
        return {contract.RECORD: tf.constant(self.record_json)}

    def _tiles(self, tiles: tf.Tensor) -> dict[str, tf.Tensor]:
        return {contract.PROBABILITIES: self.model(tiles, training=False)}

    def probabilities(self, image: tf.Tensor) -> tf.Tensor:
        """Class probabilities [N, H, W, classes] for raw images [N, H, W, C]."""
        shape = tf.shape(image)
        height, width = shape[1], shape[2]
        checks = [
            tf.debugging.assert_positive(
                tf.stack([height, width]), message="image height and width must be at least 1"
            ),
            tf.debugging.assert_less_equal(
                tf.cast(height, tf.int64) * tf.cast(width, tf.int64),
                tf.constant(self._max_pixels, tf.int64),
                message=f"image larger than this model's limit of {self._max_pixels} pixels",
            ),
        ]
        with tf.control_dependencies(checks):  # before any work on the image
            image = (tf.cast(image, tf.float32) - self._offset) / self._scale
        if self._config.padding == "same":
            return self._same(image, height, width)
        return self._valid(image, height, width)

    def _valid(self, image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """Edge-to-edge output tiles on the 2**depth grid, as `geometry.plan_tiles` lays them."""
        depth = self._config.depth
        rows = GraphAxis.plan(height, depth, self._largest)
        cols = GraphAxis.plan(width, depth, self._largest)
        # Gather every tile's mirrored input at once: [N, rows, tile_in, cols, tile_in, C].
        tiles = tf.gather(image, tile_index(rows, height), axis=1)
        tiles = tf.gather(tiles, tile_index(cols, width), axis=3)
        batch, channels = tf.shape(image)[0], tf.shape(image)[3]
        tiles = tf.transpose(tiles, [0, 1, 3, 2, 4, 5])
        tiles = tf.reshape(tiles, [-1, rows.tile_in, cols.tile_in, channels])
        outputs = self._run_tiles(tiles)
        classes = tf.shape(outputs)[-1]
        outputs = tf.reshape(
            outputs, [batch, rows.count, cols.count, rows.tile_out, cols.tile_out, classes]
        )
        outputs = tf.transpose(outputs, [0, 1, 3, 2, 4, 5])
        outputs = tf.reshape(
            outputs, [batch, rows.count * rows.tile_out, cols.count * cols.tile_out, classes]
        )
        # Output pixel p comes from tile min(p // step, count - 1), which owns it.
        outputs = tf.gather(outputs, owner_index(rows, height), axis=1)
        return tf.gather(outputs, owner_index(cols, width), axis=2)

    def _same(self, image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """The whole image at once, mirrored out to a multiple of 2**depth, centred."""
        scale = 2**self._config.depth
        rows = (-(-height // scale)) * scale
        cols = (-(-width // scale)) * scale
        top, left = (rows - height) // 2, (cols - width) // 2
        image = tf.gather(image, mirror_index(tf.range(rows) - top, height, tf), axis=1)
        image = tf.gather(image, mirror_index(tf.range(cols) - left, width, tf), axis=2)
        outputs = self._run_tiles(image)
        return outputs[:, top : top + height, left : left + width]

    def _run_tiles(self, tiles: tf.Tensor) -> tf.Tensor:
        """The network on [T, h, w, C] tiles, at most `tiles_per_call` at a time.

        The tiles go in equal chunks, as few as the limit allows, so that padding the last
        chunk costs at most one tile per chunk: one 512 x 512 image runs one tile, not four.
        """
        count = tf.shape(tiles)[0]
        calls = -(-count // self._tiles_per_call)
        chunk = -(-count // calls)
        tiles = tf.pad(tiles, [[0, calls * chunk - count], [0, 0], [0, 0], [0, 0]])
        tiles = tf.reshape(tiles, tf.concat([[calls, chunk], tf.shape(tiles)[1:]], 0))
        outputs = tf.map_fn(
            # The `tiles` signature's function: the network is stored once in the export.
            lambda batch: self.tiles(batch)[contract.PROBABILITIES],
            tiles,
            fn_output_signature=tf.TensorSpec([None, None, None, self._config.classes]),
            parallel_iterations=1,
        )
        outputs = tf.reshape(outputs, tf.concat([[-1], tf.shape(outputs)[2:]], 0))
        return outputs[:count]

    def _mask(self, probabilities: tf.Tensor) -> tf.Tensor:
        """Mask values [N, H, W] in the training convention."""
        if self._config.classes == 1:
            labels = tf.cast(probabilities[..., 0] >= self._threshold, tf.int32)
        else:
            labels = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return tf.gather(self._class_values, labels)

    def _checked_png(self, png: tf.Tensor) -> tf.Tensor:
        """`png`, once it has passed for PNG data within the pixel limit (before decoding)."""
        # Graph ops run in data order, not program order: each check waits for the last.
        # tf.debugging.Assert with the message alone: the other asserts would print the
        # bytes, and binary data makes an error message that is not UTF-8.
        check = tf.debugging.Assert(
            tf.equal(tf.strings.substr(png, 0, 8), b"\x89PNG\r\n\x1a\n"),
            ["image_png: not PNG data"],
        )
        with tf.control_dependencies([check]):
            check = tf.debugging.Assert(
                tf.strings.length(png) >= 24, ["image_png: truncated PNG header"]
            )
        with tf.control_dependencies([check]):
            # IHDR: width and height as big-endian uint32 at bytes 16-23.
            size = tf.cast(tf.io.decode_raw(tf.strings.substr(png, 16, 8), tf.uint8), tf.int64)
            width = ((size[0] * 256 + size[1]) * 256 + size[2]) * 256 + size[3]
            height = ((size[4] * 256 + size[5]) * 256 + size[6]) * 256 + size[7]
            check = tf.debugging.Assert(
                width * height <= self._max_pixels,
                [f"image_png: more pixels than this model's limit of {self._max_pixels}"],
            )
        with tf.control_dependencies([check]):
            return tf.identity(png)


class GraphAxis(NamedTuple):
    """One axis's valid tile plan as tensors: `geometry.plan_tiles` in graph ops."""

    count: tf.Tensor
    tile_in: tf.Tensor
    tile_out: tf.Tensor
    step: tf.Tensor
    margin: int

    @classmethod
    def plan(cls, size: tf.Tensor, depth: int, largest: int) -> GraphAxis:
        """The plan along an axis of `size` pixels, output tiles of at most `largest`."""
        count, tile_in, tile_out, step = valid_tiling(size, depth, largest, tf)
        return cls(count, tile_in, tile_out, step, context_margin(depth))


def tile_index(axis: GraphAxis, size: tf.Tensor) -> tf.Tensor:
    """Input pixel indices [count, tile_in] of each tile along an axis, mirrored."""
    starts = tf.range(axis.count) * axis.step - axis.margin
    return mirror_index(starts[:, tf.newaxis] + tf.range(axis.tile_in)[tf.newaxis], size, tf)


def owner_index(axis: GraphAxis, size: tf.Tensor) -> tf.Tensor:
    """For each output pixel, its place in the tiles laid side by side."""
    pixel = tf.range(size)
    tile = tf.minimum(pixel // axis.step, axis.count - 1)
    return tile * axis.tile_out + pixel - tile * axis.step


def export_model(
    model_path: str | os.PathLike,
    base_path: str | os.PathLike,
    version: int | None = None,
    **options: Any,
) -> Path:
    """Exports a `.keras` model or run directory to `base_path/<version>/`; returns it.

    `version` defaults to the next free number; an existing version is never replaced.
    `options` go to `ServingModule` (tile, tiles_per_call, threshold, max_pixels).
    """
    base_path = Path(base_path)
    if version is None:
        version = next_version(base_path)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    target = base_path / str(version)
    if target.exists():
        raise FileExistsError(
            f"{target}: version {version} exists and is never overwritten; export as "
            f"version {next_version(base_path)} (the default)"
        )
    model, record = load_model(model_path, compile=False)
    module = ServingModule(model, record, **options)
    base_path.mkdir(parents=True, exist_ok=True)
    # Non-numeric and hidden: TF Serving ignores it until the rename.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_path))
    try:
        asset_source = staging / "source"
        asset_source.mkdir()
        (asset_source / contract.RECORD_FILE).write_text(module.record_json)
        module.record_asset = tf.saved_model.Asset(str(asset_source / contract.RECORD_FILE))
        saved = staging / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=module.signatures())
        os.rename(saved, target)  # fails, rather than merges, if the version appeared
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def variables_bytes(model: keras.Model) -> int:
    """Bytes of a model's weights: the floor for an export's size."""
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights))

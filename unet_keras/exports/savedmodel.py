"""SavedModel export for TensorFlow Serving, with the preprocessing inside the graph.

A version directory holds one SavedModel with these signatures:

- `serving_default`: `image` [N, H, W, C] raw pixels in the training images' dtype, any H
  and W -> `probabilities` float32 [N, H, W, classes] and `mask` [N, H, W] in the training
  masks' value convention. The graph normalises as training did and cuts mirrored tiles
  as `Segmenter` does (both follow `unet_keras.geometry`): for valid padding on the
  2**depth grid, edge to edge; for same padding overlapping, blended with the same
  Gaussian weights and added up in the same order. So it gives the same result.
- `segment_png`: `image_png` [N] PNG bytes (8- or 16-bit) -> `mask_png_bytes` [N] PNG
  bytes (`_bytes`: TF Serving's REST API sends it base64-encoded).
- `metadata`: no input (an optional scalar `unused`, for TF Serving's REST API, which cannot
  call a signature without inputs) -> `metadata`, the model's `ModelRecord` (normalisation, mask
  convention, model shape, tiles, threshold) as JSON text; also the asset `unet_keras.json`.
- `tiles`: `tiles` [N, h, w, C] normalised float32 tiles of workable size ->
  `probabilities`, the bare network, for clients that tile images themselves.

Only core TensorFlow ops: TF Serving runs the graph with no Python. Unless told not to, the
export carries warmup requests (`assets.extra/tf_serving_warmup_requests`: one
`serving_default` image of the graph's tile size, one `segment_png`), which TF Serving and
the local server replay before a version is AVAILABLE, so its first request is not slow.

Versions are written to a hidden temporary directory beside the base path's numbered
versions and renamed into place, so a polling server never sees half a version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from unet_keras import contract
from unet_keras.contract import next_version
from unet_keras.exports.export_settings import DEFAULT_MAX_PIXELS
from unet_keras.exports.graph_tiles import GraphAxis, gather_windows
from unet_keras.exports.warmup import write_warmup_requests
from unet_keras.geometry import DEFAULT_SAME_TILE, largest_output_tile, plan_tiles, same_overlap
from unet_keras.io.atomic import sync_directory, sync_tree
from unet_keras.record import Calibration, ModelRecord, check_threshold
from unet_keras.saving import load_model

log = logging.getLogger(__name__)

# The `metadata` signature's input default: a tensor default is what SavedModel records
# in SignatureDef.defaults, which make the input optional.
_NO_INPUT = tf.constant(0, tf.int32)


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
        overlap: int | None = None,
        tiles_per_call: int = 1,
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(name="unet_serving")
        # The network's tf.Variables, not the Keras model: a tracked Keras 3 variable
        # exports as two graph variables, one the checkpoint restores and one the traced
        # functions read. TF2's loader links them through the object graph; TF Serving's
        # session loader only runs the restore op, so its functions read uninitialised
        # variables. The model stays out of the module (the functions close over it).
        self.weights = _weights_by_name(model)
        check_threshold(threshold)
        if threshold is not None:
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
        depth = self._config.depth
        if self._config.padding == "valid":
            self._largest = largest_output_tile(depth, tile)
            self._warmup_side = self._largest
        else:
            # The tiles and blending `Segmenter` uses with the same tile and overlap.
            self._tile = tile or DEFAULT_SAME_TILE
            self._overlap = same_overlap(self._tile, overlap)
            plan_tiles(self._tile, depth, "same", self._tile, self._overlap)  # checks them
            self._warmup_side = self._tile - self._overlap  # one tile
        self._threshold = record.threshold_value
        self._tiles_per_call, self._max_pixels = tiles_per_call, max_pixels
        self.record_json = json.dumps(record.to_dict(), sort_keys=True)
        channels = self._config.in_channels
        image = tf.TensorSpec([None, None, None, channels], self._dtype, contract.IMAGE)
        pngs = tf.TensorSpec([None], tf.string, contract.IMAGE_PNG)
        tiles = tf.TensorSpec([None, None, None, channels], tf.float32, contract.TILES_INPUT)
        self.serve = tf.function(self._serve, input_signature=[image], autograph=False)
        self.segment_png = tf.function(self._segment_png, input_signature=[pngs], autograph=False)
        unused = tf.TensorSpec([], tf.int32, contract.METADATA_INPUT)
        self.metadata = tf.function(
            lambda unused=_NO_INPUT: self._metadata(), input_signature=[unused], autograph=False
        )
        self.tiles = tf.function(self._tiles, input_signature=[tiles], autograph=False)
        # The bare network, which the signatures share: the export stores it once.
        self.network = tf.function(
            lambda tiles: model(tiles, training=False),
            input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)],
            autograph=False,
        )

    def signatures(self) -> dict[str, Any]:
        """The signatures to save, by name."""
        return {
            contract.SEGMENT: self.serve.get_concrete_function(),
            contract.SEGMENT_PNG: self.segment_png.get_concrete_function(),
            # The function, not a concrete one: only then is the input's default recorded.
            contract.METADATA: self.metadata,
            contract.TILES: self.tiles.get_concrete_function(),
        }

    def warmup_requests(self) -> list[predict_pb2.PredictRequest]:
        """One request per image signature, at the graph's tile size (one tile each)."""
        side = self._warmup_side
        image = tf.zeros([side, side, self._config.in_channels], self._dtype)
        png = tf.io.encode_png(image).numpy()
        requests = []
        for signature, alias, value in (
            (contract.SEGMENT, contract.IMAGE, image[tf.newaxis]),
            (contract.SEGMENT_PNG, contract.IMAGE_PNG, tf.constant([png])),
        ):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
            requests.append(request)
        return requests

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, mask = self.segment(image)
        return {contract.PROBABILITIES: probabilities, contract.MASK: mask}

    def _segment_png(self, image_png: tf.Tensor) -> dict[str, tf.Tensor]:
        def one(png: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_png(png, channels=self._config.in_channels, dtype=self._dtype)
            # serving_default's function, stored once in the export.
            mask = self.serve(image[tf.newaxis])[contract.MASK][0]
            return tf.io.encode_png(mask[..., tf.newaxis])

        with tf.control_dependencies([self._check_pngs(image_png)]):  # before decoding
            image_png = tf.identity(image_png)
        return {contract.MASK_PNG: tf.map_fn(one, image_png, fn_output_signature=tf.string)}

    def _metadata(self) -> dict[str, tf.Tensor]:
        # The input's default makes it optional (SignatureDef.defaults): gRPC callers send
        # nothing, as before; REST callers send 0, as TF Serving's REST API needs an input.
        return {contract.RECORD: tf.constant(self.record_json)}

    def _tiles(self, tiles: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([self._check_pixels(tf.shape(tiles), contract.TILES_INPUT)]):
            tiles = tf.identity(tiles)
        return {contract.PROBABILITIES: self.network(tiles)}

    def segment(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Class probabilities [N, H, W, classes] and mask [N, H, W] of raw images."""
        shape = tf.shape(image)
        with tf.control_dependencies([self._check_pixels(shape, contract.IMAGE)]):
            batch, height, width = tf.unstack(shape[:3])  # before any work on the image
        probabilities = self._tiled(image, batch, self._axis(height), self._axis(width))
        return probabilities, self._mask(probabilities)

    def _axis(self, size: tf.Tensor) -> GraphAxis:
        """The tiles along an image axis of `size` pixels, as `Segmenter` plans them."""
        if self._config.padding == "valid":
            return GraphAxis.valid(size, self._config.depth, self._largest)
        return GraphAxis.same(size, self._config.depth, self._tile, self._overlap)

    def _check_pixels(self, shape: tf.Tensor, name: str) -> tf.Operation:
        """An assertion that [N, H, W, ...] holds at least one pixel per image and at most
        `max_pixels` in all (N x H x W, without overflowing int64)."""
        batch, height, width = tf.unstack(tf.cast(shape[:3], tf.int64))
        # N and H and W are each below 2**31, so H * W fits; N * (H * W) might not.
        within = tf.logical_or(
            batch == 0, height * width <= self._max_pixels // tf.maximum(batch, 1)
        )
        return tf.debugging.Assert(
            tf.logical_and(tf.reduce_all(shape[1:3] >= 1), within),
            [f"{name}: images need at least 1 pixel a side and a request at most "
             f"{self._max_pixels} pixels in all (this model's limit)"],
        )  # fmt: skip

    def _tiled(
        self, image: tf.Tensor, batch: tf.Tensor, rows: GraphAxis, cols: GraphAxis
    ) -> tf.Tensor:
        """The probabilities of raw images, tile by tile, as `Segmenter` adds them up.

        `tiles_per_call` tiles at a time: each is cut from the raw image through mirrored
        indices, normalised and run, and its own part (for same padding: weighted) added
        into the probabilities in the order `Segmenter` adds it, so the sums round alike.
        Memory beyond the image and the result stays bounded by the tile size.
        """
        height, width = rows.size, cols.size
        per_image = rows.count * cols.count
        count = batch * per_image
        classes = self._config.classes
        result = tf.zeros(tf.stack([batch, height, width, classes]), tf.float32)

        def run_chunk(first: tf.Tensor, result: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            chunk = tf.range(first, tf.minimum(first + self._tiles_per_call, count))
            image_of, place = chunk // per_image, chunk % per_image
            row_of, col_of = place // cols.count, place % cols.count
            windows = gather_windows(image, image_of, row_of, col_of, rows, cols)
            windows = (tf.cast(windows, tf.float32) - self._offset) / self._scale
            outputs = self.network(windows)

            def add(k: tf.Tensor, result: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                top, bottom = rows.span(row_of[k])
                left, right = cols.span(col_of[k])
                start_row, start_col = rows.starts[row_of[k]], cols.starts[col_of[k]]
                own = outputs[k, top - start_row : bottom - start_row]
                own = own[:, left - start_col : right - start_col]
                if rows.blend is not None:
                    weights = rows.weights(row_of[k])[:, tf.newaxis] * cols.weights(col_of[k])
                    own = own * weights[..., tf.newaxis]
                begin = tf.stack([image_of[k], top, left, 0])
                end = tf.stack([image_of[k] + 1, bottom, right, classes])
                own = tf.strided_slice(result, begin, end) + own[tf.newaxis]
                # Updates in place where the buffer is not shared (it is not, in the loop).
                result = tf.raw_ops.TensorStridedSliceUpdate(
                    input=result, begin=begin, end=end, strides=[1, 1, 1, 1], value=own
                )
                return k + 1, result

            _, result = tf.while_loop(
                lambda k, _: k < tf.size(chunk), add, [tf.constant(0), result],
                parallel_iterations=1,
            )  # fmt: skip
            return first + self._tiles_per_call, result

        _, result = tf.while_loop(
            lambda first, _: first < count, run_chunk, [tf.constant(0), result],
            parallel_iterations=1,
        )  # fmt: skip
        return result

    def _mask(self, probabilities: tf.Tensor) -> tf.Tensor:
        """Mask values [N, H, W] in the training convention."""
        if self._config.classes == 1:
            labels = tf.cast(probabilities[..., 0] >= self._threshold, tf.int32)
        else:
            labels = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return tf.gather(self._class_values, labels)

    def _check_pngs(self, pngs: tf.Tensor) -> tf.Operation:
        """An assertion that every element is PNG data whose header claims at least one pixel,
        and that all of them together claim at most `max_pixels` (guards decompression
        bombs: nothing is decoded before it passes)."""
        name = contract.IMAGE_PNG
        # Graph ops run in data order, not program order: each check waits for the last.
        # tf.debugging.Assert with the message alone: the other asserts would print the
        # bytes, and binary data makes an error message that is not UTF-8.
        check = tf.debugging.Assert(
            tf.reduce_all(tf.strings.length(pngs) >= 24), [f"{name}: truncated PNG header"]
        )
        with tf.control_dependencies([check]):
            signature = tf.strings.substr(pngs, 0, 8) == b"\x89PNG\r\n\x1a\n"
            check = tf.debugging.Assert(tf.reduce_all(signature), [f"{name}: not PNG data"])
        with tf.control_dependencies([check]):
            # IHDR: width and height as big-endian uint32 at bytes 16-23.
            size = tf.io.decode_raw(tf.strings.substr(pngs, 16, 8), tf.uint8)
            size = tf.reshape(tf.cast(size, tf.int64), [-1, 2, 4])
            width, height = tf.unstack(tf.reduce_sum(size * [2**24, 2**16, 2**8, 1], -1), axis=1)
            # Each side is below 2**32: compare by division, as the product can overflow.
            each = tf.logical_and(height >= 1, width <= self._max_pixels // tf.maximum(height, 1))
            each = tf.logical_and(each, width >= 1)
            pixels = tf.reduce_sum(tf.where(each, width * height, 0))
            check = tf.debugging.Assert(
                tf.logical_and(tf.reduce_all(each), pixels <= self._max_pixels),
                [f"{name}: PNG headers claim no pixels, or more pixels in all than this "
                 f"model's limit of {self._max_pixels}"],
            )  # fmt: skip
        return check


def export_model(
    model_path: str | os.PathLike,
    base_path: str | os.PathLike,
    version: int | None = None,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    tiles_per_call: int = 1,
    threshold: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: bool = True,
) -> Path:
    """Exports a `.keras` model or run directory to `base_path/<version>/`; returns it.

    `version` defaults to the next free number; an existing version is never replaced.
    Exports running at once each take their own number: the version is claimed by the
    rename that publishes it, and a number taken meanwhile moves a default one on.
    `tile`, `overlap`, `tiles_per_call`, `threshold` and `max_pixels` are the graph's
    (`ServingModule`); `warmup` writes the warmup requests.
    """
    base_path = Path(base_path)
    if version is not None and version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    if version is not None and (base_path / str(version)).exists():
        raise FileExistsError(
            f"{base_path / str(version)}: version {version} exists and is never overwritten; "
            f"export as version {next_version(base_path)} (the default)"
        )
    model, record = load_model(model_path, compile=False)
    module = ServingModule(
        model, record, tile=tile, overlap=overlap, tiles_per_call=tiles_per_call,
        threshold=threshold, max_pixels=max_pixels,
    )  # fmt: skip
    base_path.mkdir(parents=True, exist_ok=True)
    # Non-numeric and hidden: TF Serving ignores it until the rename.
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=base_path))
    try:
        asset_source = staging / "source"
        asset_source.mkdir()
        (asset_source / contract.RECORD_FILE).write_text(module.record_json)
        module.record_asset = tf.saved_model.Asset(str(asset_source / contract.RECORD_FILE))
        saved = staging / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=module.signatures())
        if warmup:
            write_warmup_requests(saved, module.warmup_requests())
        sync_tree(saved)  # all on disk before it becomes visible
        published = _publish(saved, base_path, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _warn_if_newer_than_the_server(published)
    return published


def _warn_if_newer_than_the_server(version: Path) -> None:
    """Warns, with the fix, when this TensorFlow is newer than the deployment image's: an
    op or attribute added since would not load there."""

    def minor(release: str) -> tuple[int, ...]:
        return tuple(int(part) for part in release.split(".")[:2] if part.isdigit())

    if minor(tf.__version__) <= minor(contract.TF_SERVING_VERSION):
        return
    serving = contract.TF_SERVING_VERSION
    minor = ".".join(serving.split(".")[:2])
    log.warning(
        "%s was written by TensorFlow %s, newer than the %s of the deployment image "
        "(tensorflow/serving:%s), which may not load ops or attributes added since (CI runs "
        "this project's exports under TensorFlow %s). To be sure, export with the image's "
        "TensorFlow: pip install 'tensorflow==%s.*', and set "
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (tensorflow-serving-api %s's messages "
        "need it under today's protobuf); or serve from a newer image when there is one.",
        version, tf.__version__, serving, serving, contract.OLDEST_TF_SERVING_VERSION,
        minor, minor,
    )  # fmt: skip


def _weights_by_name(model: keras.Model) -> dict[str, Any]:
    """The network's variables by layer path; an ensemble's under their member's name, as
    its members' layers share names."""
    from unet_keras.ensemble import ensemble_members

    members = [member for _, member in ensemble_members(model)]
    if not members:
        return {variable.path: variable.value for variable in model.weights}
    return {f"{m.name}/{variable.path}": variable.value for m in members for variable in m.weights}


def _publish(saved: Path, base_path: Path, version: int | None) -> Path:
    """Renames a finished export to its version folder; returns the folder."""
    while True:
        number = next_version(base_path) if version is None else version
        target = base_path / str(number)
        try:
            # A rename onto an existing folder fails rather than merges (ENOTEMPTY/EEXIST).
            os.rename(saved, target)
        except OSError as error:
            if not target.exists():
                raise
            if version is not None:
                raise FileExistsError(
                    f"{target}: version {number} appeared during the export and is never "
                    f"overwritten; export as version {next_version(base_path)}"
                ) from error
            continue  # another export took this number: take the next
        sync_directory(base_path)
        return target


def variables_bytes(model: keras.Model) -> int:
    """Bytes of a model's weights: the floor for an export's size."""
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights))

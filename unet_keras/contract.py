"""The serving contract: what an export offers, and what the server and the client rely on.

Signature, input and output names, the model record's file, the tensor dtypes the wire
carries, and the rule for numbered version folders, written once and imported by the
export, the local server, the client, and the model loader that reads exports. TF-free.

- `serving_default`: `image` [N, H, W, C] raw pixels -> `probabilities` [N, H, W, classes]
  and `mask` [N, H, W] in the training masks' values;
- `segment_png`: `image_png` [N] PNG bytes -> `mask_png_bytes` [N] PNG bytes (TF Serving's
  REST API writes a string output as base64 only when its name ends in `_bytes`; older
  exports, whose output is `mask_png`, are still served as they are);
- `metadata`: nothing (an optional scalar `unused`, default 0: TF Serving's REST API cannot
  call a signature without inputs) -> `metadata`, the `ModelRecord` as JSON text;
- `tiles`: `tiles` [N, h, w, C] normalised float32 -> `probabilities` (the bare network).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

# The TensorFlow Serving releases exports are made for, each carrying the TensorFlow of its
# own version: the deployment files run the newest (serving/kubernetes/deployment.yaml,
# serving/launch.sh); CI runs every kind of export under the oldest's TensorFlow. setup.cfg's
# tensorflow range starts at the oldest; `unet-keras export` warns when a TensorFlow newer
# than the deployment image's writes an export. Tests read all of them.
TF_SERVING_VERSION = "2.20.0"
OLDEST_TF_SERVING_VERSION = "2.18.0"

# Signatures.
SEGMENT = "serving_default"
SEGMENT_PNG = "segment_png"
METADATA = "metadata"
TILES = "tiles"
# Inputs and outputs, by the alias a request or response uses.
IMAGE = "image"
IMAGE_PNG = "image_png"
TILES_INPUT = "tiles"
PROBABILITIES = "probabilities"
MASK = "mask"
MASK_PNG = "mask_png_bytes"
RECORD = "metadata"
METADATA_INPUT = "unused"

SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    SEGMENT: ((IMAGE,), (PROBABILITIES, MASK)),
    SEGMENT_PNG: ((IMAGE_PNG,), (MASK_PNG,)),
    METADATA: ((METADATA_INPUT,), (RECORD,)),
    TILES: ((TILES_INPUT,), (PROBABILITIES,)),
}

# The one field GetModelMetadata offers (TF Serving's get_model_metadata_impl.cc).
METADATA_FIELD = "signature_def"

# The model record's file: an entry of every .keras file and an asset of every export.
RECORD_FILE = "unet_keras.json"
# An ONNX export's `metadata_props`: the record, and how to tile images for the network.
ONNX_RECORD = "unet_keras.record"
ONNX_TILING = "unet_keras.tiling"
# Requests TF Serving replays before a version is AVAILABLE (saved_model_warmup_util.h).
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# The SavedModel tag set TF Serving loads.
SERVE_TAG = "serve"

# Version folders: TF Serving reads a child of the base path as a version when its whole
# name parses as an int64 (file_system_storage_path_source.cc, absl::SimpleAtoi); others
# are ignored, so a staging folder becomes visible only when renamed to its number.
_VERSION_NAME = re.compile(r"[0-9]+")
_INT64_MAX = 2**63 - 1


def version_number(name: str) -> int | None:
    """The version a folder name stands for, or None when TF Serving would skip it."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number <= _INT64_MAX else None


def version_folders(base_path: str | os.PathLike) -> dict[int, Path]:
    """The numbered version folders under `base_path`, by number (OSError if unreadable)."""
    folders = {}
    for child in Path(base_path).iterdir():
        number = version_number(child.name)
        if number is not None:
            folders[number] = child
    return folders


def next_version(base_path: str | os.PathLike) -> int:
    """One more than the largest numbered version under `base_path` (1 when none)."""
    base_path = Path(base_path)
    versions = version_folders(base_path) if base_path.is_dir() else {}
    return max(versions, default=0) + 1


@dataclasses.dataclass(frozen=True)
class WireType:
    """How a TensorFlow dtype travels in a TensorProto."""

    name: str  # the tensorflow.DataType enum name, e.g. "DT_FLOAT"
    numpy: np.dtype | None  # the array dtype (object for strings; None: not in NumPy)
    field: str  # the repeated field that carries typed values (Tensor::AsProtoField)
    bit_view: np.dtype | None = None  # the values' bit patterns in that field, if not the values


WIRE_TYPES = (
    WireType("DT_FLOAT", np.dtype(np.float32), "float_val"),
    WireType("DT_DOUBLE", np.dtype(np.float64), "double_val"),
    WireType("DT_HALF", np.dtype(np.float16), "half_val", np.dtype(np.uint16)),
    WireType("DT_BFLOAT16", None, "half_val", np.dtype(np.uint16)),
    WireType("DT_INT8", np.dtype(np.int8), "int_val"),
    WireType("DT_INT16", np.dtype(np.int16), "int_val"),
    WireType("DT_INT32", np.dtype(np.int32), "int_val"),
    WireType("DT_INT64", np.dtype(np.int64), "int64_val"),
    WireType("DT_UINT8", np.dtype(np.uint8), "int_val"),
    WireType("DT_UINT16", np.dtype(np.uint16), "int_val"),
    WireType("DT_UINT32", np.dtype(np.uint32), "uint32_val"),
    WireType("DT_UINT64", np.dtype(np.uint64), "uint64_val"),
    WireType("DT_BOOL", np.dtype(np.bool_), "bool_val"),
    WireType("DT_STRING", np.dtype(object), "string_val"),
    WireType("DT_COMPLEX64", np.dtype(np.complex64), "scomplex_val", np.dtype(np.float32)),
    WireType("DT_COMPLEX128", np.dtype(np.complex128), "dcomplex_val", np.dtype(np.float64)),
)

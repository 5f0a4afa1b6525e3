"""Requests and responses of the calls the clients make, and which windows to send.

Pure functions, free of I/O: `unet_keras.client.core` builds the clients' operations on
them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unet_keras import contract
from unet_keras.client import messages
from unet_keras.client.config import ChannelConfig
from unet_keras.client.tensors import dtype_name, make_ndarray, make_tensor_proto
from unet_keras.geometry import receptive_reach
from unet_keras.record import ModelRecord
from unet_keras.windows import Window, plan_image_windows, stitch, whole_image

log = logging.getLogger(__name__)

# Room for everything in a request or response besides the pixels: model spec, names,
# shape, framing. Real overhead is a few hundred bytes.
MESSAGE_SLACK = 4096
# The mask is uint8, or uint16 for class values above 255.
MASK_BYTES = 2
# As JSON text (REST), the most a value takes: a pixel "65535," nested in its own
# channel list, a mask value, and a probability written as a double (REST answers carry
# the probabilities always: TF Serving's REST API has no output filter).
JSON_PIXEL_BYTES = 9
JSON_RESPONSE_BYTES = 8 + 26
Version = int | str | None


@dataclass(frozen=True)
class Segmentation:
    """One image's result: its mask, and its class probabilities when asked for.

    `mask` is [H, W] in the training masks' values (uint8, or uint16 above 255);
    `probabilities` is float32 [H, W, classes], or None.
    """

    mask: np.ndarray
    probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class Layout:
    """What tiling needs from the model: context per side, grid, and number of classes."""

    context: int
    grid: int
    classes: int


def model_spec(name: str, version: Version, signature: str = "") -> Any:
    """A ModelSpec: an int version is a number, a str one a label, None the latest."""
    if isinstance(version, bool) or not isinstance(version, int | str | None):
        raise TypeError(f"version must be an int, a label (str) or None, got {version!r}")
    spec = messages.ModelSpec(name=name, signature_name=signature)
    if isinstance(version, int):
        spec.version.value = version
    elif isinstance(version, str):
        spec.version_label = version
    return spec


def predict_request(spec: Any, inputs: dict[str, Any], output_filter: Sequence[str] = ()) -> Any:
    """A PredictRequest with each input converted to a TensorProto."""
    request = messages.PredictRequest(model_spec=spec, output_filter=list(output_filter))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(make_tensor_proto(value))
    return request


def outputs(response: Any) -> dict[str, np.ndarray]:
    """A PredictResponse's outputs as numpy arrays, by alias.

    Every value must be in the response: a server cannot make the client allocate more
    than it sent.
    """
    arrays = {}
    for name, tensor in response.outputs.items():
        try:
            arrays[name] = make_ndarray(tensor, fill=False)
        except TypeError as error:  # a dtype NumPy cannot hold: the response is unusable
            raise ValueError(f"the server's {name!r} output: {error}") from None
    return arrays


def metadata_request(spec: Any) -> Any:
    """A GetModelMetadataRequest for the model's signatures."""
    return messages.GetModelMetadataRequest(
        model_spec=spec, metadata_field=[contract.METADATA_FIELD]
    )


def signatures(response: Any) -> dict[str, Any]:
    """A GetModelMetadataResponse as plain data: the model, its version, its signatures."""
    packed = response.metadata.get(contract.METADATA_FIELD)
    expected = "tensorflow.serving.SignatureDefMap"
    if packed is None or packed.type_url.rsplit("/", 1)[-1] != expected:
        found = "nothing" if packed is None else packed.type_url
        raise ValueError(
            f"model metadata: expected a {expected} in {contract.METADATA_FIELD}, got {found}"
        )
    signature_map = messages.SignatureDefMap.FromString(packed.value)
    return {
        "model": response.model_spec.name,
        "version": response.model_spec.version.value,
        "signatures": {
            name: {
                "method": signature.method_name,
                "inputs": {k: _tensor_info(v) for k, v in sorted(signature.inputs.items())},
                "outputs": {k: _tensor_info(v) for k, v in sorted(signature.outputs.items())},
            }
            for name, signature in sorted(signature_map.signature_def.items())
        },
    }


def _tensor_info(info: Any) -> dict[str, Any]:
    """A TensorInfo's dtype name and shape (None for unknown rank, -1 for unknown sizes)."""
    shape = info.tensor_shape
    return {
        "dtype": dtype_name(info.dtype),
        "shape": None if shape.unknown_rank else [dim.size for dim in shape.dim],
    }


def statuses(response: Any) -> list[dict[str, Any]]:
    """A GetModelStatusResponse as plain data, one entry per version."""
    states = messages.ModelVersionStatus.DESCRIPTOR.enum_types_by_name["State"]
    codes = messages.POOL.FindEnumTypeByName("tensorflow.error.Code")
    return [
        {
            "version": status.version,
            "state": _enum_name(states, status.state),
            "error_code": _enum_name(codes, status.status.error_code),
            "error_message": status.status.error_message,
        }
        for status in response.model_version_status
    ]


def _enum_name(enum: Any, number: int) -> str:
    value = enum.values_by_number.get(number)
    return value.name if value is not None else str(number)


def record(response: Any) -> ModelRecord:
    """The model's record from a `metadata` signature PredictResponse, checked."""
    text = outputs(response).get(contract.RECORD)
    if text is None or text.shape != ():
        raise ValueError(
            f"the {contract.METADATA} signature returned no scalar {contract.RECORD!r} output"
        )
    try:
        values = json.loads(text[()])
        if isinstance(values, dict):
            values = _known_fields(values)
        return ModelRecord.from_dict(values)
    except ValueError as error:  # JSON errors are ValueErrors too
        raise ValueError(f"the model's record is not readable: {error}") from None


def _known_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The record's fields this client knows; a newer model's others are logged and left.

    A model exported by a later version may name more of its training (as `symmetries`
    was added) than a client deployed earlier knows: none of those decide how the client
    sends pixels or reads masks, so an older client keeps working with newer models.
    """
    known = {field.name for field in dataclasses.fields(ModelRecord)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning(
            "the model's record has fields this client does not know, left unread: %s "
            "(the model was exported by a later unet-keras)", unknown
        )  # fmt: skip
    return {key: value for key, value in values.items() if key in known}


def layout(record: ModelRecord, context: int | None, grid: int | None) -> Layout:
    """Tiling figures from the model's record, unless given."""
    depth = record.model.depth
    return Layout(
        receptive_reach(depth) if context is None else context,
        2**depth if grid is None else grid,
        record.model.classes,
    )


def image_array(image: Any) -> np.ndarray:
    """An image as [H, W, C]: a 2-D image gets one channel."""
    array = np.asarray(image)
    if array.ndim == 2:
        return array[..., np.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(
            f"expected one image as a non-empty [H, W] or [H, W, C] array, got shape "
            f"{list(array.shape)}"
        )
    return array


def max_window_pixels(
    image: np.ndarray, channel: ChannelConfig, classes: int = 0, json: bool = False
) -> int:
    """The most pixels a window may have for its request and response to fit the limits.

    The response holds the mask and, per pixel, `classes` float32 probabilities; `json`:
    as REST's JSON text, which holds the probabilities of at least one class.
    """
    if json:
        request_bytes = image.shape[2] * JSON_PIXEL_BYTES
        response_bytes = JSON_RESPONSE_BYTES * max(classes, 1)
    else:
        request_bytes = image.shape[2] * image.dtype.itemsize
        response_bytes = MASK_BYTES + 4 * classes
    pixels = min(
        (channel.max_send_bytes - MESSAGE_SLACK) // request_bytes,
        (channel.max_receive_bytes - MESSAGE_SLACK) // response_bytes,
    )
    if pixels < 1:
        raise ValueError(
            f"message limits of {channel.max_send_bytes} bytes (send) and "
            f"{channel.max_receive_bytes} (receive) leave no room for pixels: raise them"
        )
    return pixels


def fits_one_request(image: np.ndarray, channel: ChannelConfig, json: bool = False) -> bool:
    """Whether the image and its mask fit one request and one response."""
    return image.shape[0] * image.shape[1] <= max_window_pixels(image, channel, json=json)


def windows_for(
    image: np.ndarray,
    channel: ChannelConfig,
    layout: Layout | None,
    probabilities: bool,
    json: bool = False,
) -> list[Window]:
    """The windows to request; the whole image when it fits (layout may then be None)."""
    height, width = image.shape[:2]
    if layout is None:
        return [whole_image(height, width)]
    classes = layout.classes if probabilities or json else 0
    limit = max_window_pixels(image, channel, classes, json)
    return plan_image_windows(height, width, limit, layout.context, layout.grid)


def _check_window_result(window: Window, result: dict[str, np.ndarray]) -> None:
    """Raises a ValueError unless a window's outputs have the window's size."""
    rows = window.rows.stop - window.rows.start
    cols = window.cols.stop - window.cols.start
    mask = result.get(contract.MASK)
    if mask is None or mask.shape != (1, rows, cols):
        found = "no mask" if mask is None else f"a mask of shape {list(mask.shape)}"
        raise ValueError(f"the server answered a {rows}x{cols} image with {found}")
    probabilities = result.get(contract.PROBABILITIES)
    if probabilities is not None and probabilities.shape[:3] != (1, rows, cols):
        raise ValueError(
            f"the server answered a {rows}x{cols} image with probabilities of shape "
            f"{list(probabilities.shape)}"
        )


def sends_as_png(image: np.ndarray) -> bool:
    """Whether an image travels losslessly as PNG: 8- or 16-bit, 1 to 4 channels."""
    return (
        image.dtype in (np.uint8, np.uint16)
        and image.shape[2] in (1, 2, 3, 4)
        and (image.dtype == np.uint8 or image.shape[2] == 1)
    )


def png_bytes(image: np.ndarray) -> bytes:
    """An [H, W, C] uint8 or [H, W, 1] uint16 image as PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_mask_output(result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`segment_png`'s answer as `serving_default`'s: {"mask": [1, H, W]}."""
    import io

    from PIL import Image

    # Exports before `mask_png_bytes` named the output `mask_png`.
    encoded = result.get(contract.MASK_PNG, result.get("mask_png"))
    if encoded is None or encoded.shape != (1,):
        raise ValueError("the server's segment_png answer holds no single PNG mask")
    try:
        with Image.open(io.BytesIO(encoded[0])) as png:
            mask = np.asarray(png)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"the server's PNG mask is unreadable: {error}") from None
    if mask.ndim != 2:
        raise ValueError(f"the server's PNG mask has shape {list(mask.shape)}, not [H, W]")
    return {contract.MASK: mask[np.newaxis]}


def assemble(
    windows: Sequence[Window], results: Sequence[dict[str, np.ndarray]], image: np.ndarray
) -> Segmentation:
    """The windows' outputs ([1, h, w, ...] each) stitched into the image's Segmentation."""
    height, width = image.shape[:2]
    for window, result in zip(windows, results, strict=True):
        _check_window_result(window, result)
    masks = [result[contract.MASK][0] for result in results]
    mask = stitch(windows, masks, height, width)
    if contract.PROBABILITIES not in results[0]:
        return Segmentation(mask)
    probabilities = [result[contract.PROBABILITIES][0] for result in results]
    return Segmentation(mask, stitch(windows, probabilities, height, width))

"""The U-Net of Ronneberger, Fischer and Brox (2015) and its size arithmetic.

With `padding="valid"` the network is the paper's: unpadded 3x3 convolutions shrink every
feature map, so the output is smaller than the input by a fixed context margin on each side
(92 pixels for depth 4: a 572x572 tile predicts its central 388x388) and only some input
sizes are workable. The size helpers below say which, without building anything; tiling
uses them to plan overlap-tile prediction. With `padding="same"` the output has the input's
size, which must then be a multiple of `2**depth`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

PADDINGS = ("valid", "same")

# Each level's two unpadded 3x3 convolutions trim this many pixels from a feature map's size.
_CONV_TRIM = 4


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _check_depth(depth: int) -> None:
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")


def _valid_input_from_bottom(bottom: int, depth: int) -> int:
    """Input size whose bottleneck (after its two convolutions) has size `bottom`."""
    scale = 2**depth
    return scale * (bottom + _CONV_TRIM) + _CONV_TRIM * (scale - 1)


def _valid_output_from_bottom(bottom: int, depth: int) -> int:
    """Output size of the expanding path that starts from a bottleneck of size `bottom`."""
    scale = 2**depth
    return scale * bottom - _CONV_TRIM * (scale - 1)


def _smallest_bottom(depth: int) -> int:
    """Smallest bottleneck size that still leaves an output of at least one pixel."""
    scale = 2**depth
    return -(-(_CONV_TRIM * (scale - 1) + 1) // scale)


def context_margin(depth: int = 4) -> int:
    """Pixels a valid-padding U-Net loses on each side: 92 for depth 4, as in the paper."""
    _check_depth(depth)
    return (_valid_input_from_bottom(1, depth) - _valid_output_from_bottom(1, depth)) // 2


def valid_input_size(n: int, depth: int = 4) -> int:
    """Smallest input size of at least `n` that a valid-padding U-Net of `depth` accepts."""
    _check_depth(depth)
    scale = 2**depth
    # Workable sizes are input(bottom), linear in bottom with slope 2**depth.
    bottom = -(-(n - _valid_input_from_bottom(0, depth)) // scale)
    return _valid_input_from_bottom(max(bottom, _smallest_bottom(depth)), depth)


def input_size_for_output(n: int, depth: int = 4) -> int:
    """Smallest workable valid-padding input size whose output is at least `n` pixels."""
    _check_depth(depth)
    scale = 2**depth
    bottom = -(-(n + _CONV_TRIM * (scale - 1)) // scale)
    return _valid_input_from_bottom(max(bottom, _smallest_bottom(depth)), depth)


def _smallest_input(depth: int, padding: str) -> int:
    """Smallest side length the U-Net accepts."""
    if padding == "same":
        return 2**depth
    return _valid_input_from_bottom(_smallest_bottom(depth), depth)


def _workable_neighbours(size: int, depth: int, padding: str) -> tuple[int | None, int]:
    """The nearest workable sizes below and above `size` (None when none is below)."""
    scale, first = 2**depth, _smallest_input(depth, padding)
    if padding == "same":
        above = max(first, -(-size // scale) * scale)
    else:
        above = valid_input_size(size, depth)
    below = above - scale
    return (below if below >= first else None), above


def _is_workable(size: int, depth: int, padding: str) -> bool:
    if padding == "same":
        return size > 0 and size % 2**depth == 0
    return size > 0 and valid_input_size(size, depth) == size


def check_input_size(size: int | Sequence[int], depth: int = 4, padding: str = "valid") -> None:
    """Raises a ValueError naming the nearest workable sizes unless the U-Net accepts `size`.

    `size` is one side length or `(height, width)`; each side is checked on its own.
    """
    _check_depth(depth)
    _check_padding(padding)
    if isinstance(size, Sequence):
        if len(size) != 2:
            raise ValueError(f"input size must be one length or (height, width), got {size!r}")
        sides = list(zip(("height", "width"), size, strict=True))
    else:
        sides = [("size", size)]
    for name, side in sides:
        if int(side) != side:
            raise ValueError(f"input {name} must be an integer, got {side!r}")
        side = int(side)
        if _is_workable(side, depth, padding):
            continue
        below, above = _workable_neighbours(side, depth, padding)
        scale, first = 2**depth, _smallest_input(depth, padding)
        nearest = f"{below} or {above}" if below is not None else f"{above}"
        raise ValueError(
            f"input {name} {side} does not fit a depth-{depth} U-Net with {padding} padding "
            f"(workable sizes: {first}, {first + scale}, {first + 2 * scale}, ...); "
            f"nearest workable: {nearest}"
        )


def output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output side length for an input side length; unworkable sizes raise a ValueError."""
    check_input_size(input_size, depth, padding)
    if padding == "same":
        return int(input_size)
    bottom = (int(input_size) - _valid_input_from_bottom(0, depth)) // 2**depth
    return _valid_output_from_bottom(bottom, depth)


@keras.saving.register_keras_serializable(package="unet_keras")
class CenterCrop2D(layers.Layer):
    """Crops the first input's height and width, centred, to those of the second input.

    Works from run-time shapes so the model accepts any workable input size.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        skip, reference = inputs
        skip_shape, reference_shape = ops.shape(skip), ops.shape(reference)
        height, width = reference_shape[1], reference_shape[2]
        top = (skip_shape[1] - height) // 2
        left = (skip_shape[2] - width) // 2
        return skip[:, top : top + height, left : left + width, :]

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        skip_shape, reference_shape = input_shape
        return (skip_shape[0], reference_shape[1], reference_shape[2], skip_shape[3])


def _conv_block(
    x: keras.KerasTensor, filters: int, prefix: str, padding: str, batch_norm: bool
) -> keras.KerasTensor:
    """Two 3x3 convolutions, each followed by optional batch norm and a ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding=padding,
            kernel_initializer="he_normal",
            # Batch norm's shift makes a convolution bias redundant.
            use_bias=not batch_norm,
            name=f"{prefix}_conv{i}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}_relu{i}")(x)
    return x


def build_unet(
    in_channels: int = 1,
    classes: int = 1,
    depth: int = 4,
    filters: int = 64,
    padding: str = "valid",
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> keras.Model:
    """Builds the U-Net; the defaults are the paper's network with one sigmoid output.

    `classes=1` gives one sigmoid channel (binary masks), `classes>=2` a softmax over
    `classes` channels. `filters` is the first level's width, doubled at each of the `depth`
    poolings. Dropout (rate `dropout`, 0 disables it) is applied where the paper's "drop-out
    layers at the end of the contracting path" sit in the authors' Caffe network: on the
    deepest contracting level's output (feeding both its pooling and its skip connection)
    and on the bottleneck's output. The input is `(None, None, in_channels)`; see
    `check_input_size` for the sizes it accepts.
    """
    _check_padding(padding)
    _check_depth(depth)
    for name, value in (("in_channels", in_channels), ("classes", classes), ("filters", filters)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = _conv_block(x, filters * 2 ** (level - 1), f"down{level}", padding, batch_norm)
        if level == depth and dropout:
            x = layers.Dropout(dropout, name=f"down{level}_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)

    x = _conv_block(x, filters * 2**depth, "bottom", padding, batch_norm)
    if dropout:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)

    for level in range(depth, 0, -1):
        level_filters = filters * 2 ** (level - 1)
        x = layers.Conv2DTranspose(
            level_filters,
            2,
            strides=2,
            kernel_initializer="he_normal",
            name=f"up{level}_upconv",
        )(x)
        x = layers.ReLU(name=f"up{level}_upconv_relu")(x)
        skip = skips[level - 1]
        if padding == "valid":
            skip = CenterCrop2D(name=f"up{level}_crop")([skip, x])
        x = layers.Concatenate(name=f"up{level}_concat")([skip, x])
        x = _conv_block(x, level_filters, f"up{level}", padding, batch_norm)

    # float32 keeps the probabilities (and the loss computed from them) exact under
    # mixed precision.
    outputs = layers.Conv2D(
        classes,
        1,
        activation="sigmoid" if classes == 1 else "softmax",
        kernel_initializer="he_normal",
        dtype="float32",
        name="output",
    )(x)
    return keras.Model(inputs, outputs, name="unet")

"""The U-Net of Ronneberger, Fischer and Brox (2015), built from small Keras blocks.

With `padding="valid"` the network is the paper's: unpadded 3x3 convolutions, and skip
connections cropped to the expanding path's size before they are concatenated. With
`padding="same"` the output has the input's size. Which input sizes each accepts is
`unet_keras.geometry`'s arithmetic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras
from keras import layers, ops

from unet_keras.geometry import check_depth, check_padding


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


@keras.saving.register_keras_serializable(package="unet_keras")
class FusedBatchNormalization(layers.BatchNormalization):
    """Batch normalisation whose training step is TensorFlow's fused kernel.

    Keras 3 normalises a bfloat16 batch with float32 ops of its own: the default model's
    training step on a bf16 CPU took 2.28x one without batch normalisation, with the fused
    kernel 1.26x (docs/benchmarks.md). Everything else (inference, masks, renorm, other
    backends) is Keras's own code, and the weights and moving statistics are Keras's too.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        fused = (
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and self.scale
            and self.center
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            ops.cast(self.gamma, "float32"),
            ops.cast(self.beta, "float32"),
            epsilon=self.epsilon,
            is_training=True,
        )
        # The kernel hands out the unbiased variance; Keras's moving variance follows the
        # batch's own, which the kernel normalised with.
        count = ops.cast(ops.size(inputs) // ops.shape(inputs)[-1], "float32")
        variance = variance * (count - 1.0) / count
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)


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
            # Moving statistics over about 10 steps (PyTorch's default), not Keras's 100: a
            # short run's model (the quick start's 100 steps) kept a third of its initial ones.
            x = FusedBatchNormalization(momentum=0.9, name=f"{prefix}_bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}_relu{i}")(x)
    return x


def _contracting_path(
    x: keras.KerasTensor, depth: int, filters: int, padding: str, batch_norm: bool, dropout: float
) -> tuple[keras.KerasTensor, list[keras.KerasTensor]]:
    """Down to the bottleneck; returns it and each level's output for the skips."""
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
    return x, skips


def _expanding_path(
    x: keras.KerasTensor,
    skips: list[keras.KerasTensor],
    filters: int,
    padding: str,
    batch_norm: bool,
) -> keras.KerasTensor:
    """Up from the bottleneck, each level joined by its (cropped) skip connection."""
    for level in range(len(skips), 0, -1):
        level_filters = filters * 2 ** (level - 1)
        x = layers.Conv2DTranspose(
            level_filters, 2, strides=2, kernel_initializer="he_normal", name=f"up{level}_upconv"
        )(x)
        x = layers.ReLU(name=f"up{level}_upconv_relu")(x)
        skip = skips[level - 1]
        if padding == "valid":
            skip = CenterCrop2D(name=f"up{level}_crop")([skip, x])
        x = layers.Concatenate(name=f"up{level}_concat")([skip, x])
        x = _conv_block(x, level_filters, f"up{level}", padding, batch_norm)
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
    `unet_keras.geometry.check_input_size` for the sizes it accepts.
    """
    check_padding(padding)
    check_depth(depth)
    for name, value in (("in_channels", in_channels), ("classes", classes), ("filters", filters)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    x, skips = _contracting_path(inputs, depth, filters, padding, batch_norm, dropout)
    x = _expanding_path(x, skips, filters, padding, batch_norm)
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


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy is `name` inside the block and as it was after it, so
    that models built elsewhere in the process keep theirs."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)

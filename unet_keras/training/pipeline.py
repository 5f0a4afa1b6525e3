"""`tf.data` pipelines: random augmented training tiles and whole-image validation tiles.

Examples are prepared once (`unet_keras.training.prepare`) and cached.
A training tile is read through a field of sampling coordinates: the tile's place in the
image plus the elastic displacement, mirrored at the image border, so a valid-padding
model's input tile carries real or mirrored context around a fully labelled output tile
(the paper's overlap-tile strategy) and deformation never pulls in empty borders.

Targets follow the layout the losses expect: [..., 0] class index, [..., 1] pixel weight;
weight 0 marks pixels outside the image, which losses and metrics ignore.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from unet_keras.geometry import mirror_index
from unet_keras.training import augment
from unet_keras.training.prepare import Example
from unet_keras.training.training_settings import AugmentConfig

# The functions traced into the pipelines branch on Python settings only (tensor branches
# are explicit `tf.cond`s), so AutoGraph's rewrite of their source would add nothing but
# start-up time: 2-2.5 s a training run (docs/benchmarks.md).
_without_autograph = tf.autograph.experimental.do_not_convert


def _example_dataset(examples: Sequence[Example]) -> tf.data.Dataset:
    """One element per image: (image, labels, weights); callers cache it after one pass.

    Not `Dataset.from_generator`: its op sets glibc's M_TRIM_THRESHOLD to 128 KiB for the
    whole process, which made every training step afterwards 1.5x slower (each step then
    maps its activations afresh; docs/benchmarks.md).
    """
    channels = examples[0].image.shape[-1]

    def arrays(index: np.int64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        example = examples[index]
        return (
            example.image.astype(np.float32, copy=False),
            example.labels.astype(np.int32, copy=False),
            example.weights.astype(np.float32, copy=False),
        )

    @_without_autograph
    def load_example(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        image, labels, weights = tf.numpy_function(
            arrays, [index], (tf.float32, tf.int32, tf.float32), stateful=False
        )
        return (
            tf.ensure_shape(image, (None, None, channels)),
            tf.ensure_shape(labels, (None, None)),
            tf.ensure_shape(weights, (None, None)),
        )

    return tf.data.Dataset.range(len(examples)).map(load_example)


def _check_tiles(input_size: int, output_size: int) -> int:
    """Returns the context margin per side of a tile pair, or raises naming both sizes."""
    margin, odd = divmod(input_size - output_size, 2)
    if output_size < 1 or margin < 0 or odd:
        raise ValueError(
            f"tile sizes must satisfy input_size >= output_size >= 1 with an even difference "
            f"(the same context on each side); got input {input_size}, output {output_size}"
        )
    return margin


def _mirrored_crop(array: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: int) -> tf.Tensor:
    """Crops a size x size window at (top, left), mirroring rows and columns outside."""
    rows = mirror_index(top + tf.range(size), tf.shape(array)[0], tf)
    cols = mirror_index(left + tf.range(size), tf.shape(array)[1], tf)
    return tf.gather(tf.gather(array, rows, axis=0), cols, axis=1)


def _random_origin(seed: tf.Tensor, image_size: tf.Tensor, output_size: int) -> tf.Tensor:
    """Draws where an output tile starts so that it lies in the image where it fits."""
    low = tf.minimum(0, image_size - output_size)
    high = tf.maximum(0, image_size - output_size)
    return tf.random.stateless_uniform((), seed, low, high + 1, dtype=tf.int32)


def _flip_rotate(image: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, config: AugmentConfig):
    """Applies one of the 8 flips and rotations to a centred pair of square tiles."""
    draws = tf.random.stateless_uniform((2,), seed, 0, 4, dtype=tf.int32)
    if config.rotations:
        image, targets = tf.image.rot90(image, draws[0]), tf.image.rot90(targets, draws[0])
    if config.flips:
        flip = draws[1] % 2 == 1
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        targets = tf.cond(flip, lambda: tf.reverse(targets, [1]), lambda: targets)
    return image, targets


def _intensity(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Mild gamma and contrast changes, on normalised intensities of any sign."""
    draws = tf.random.stateless_uniform((2,), seed, -1.0, 1.0)
    if config.gamma > 0:
        # Gamma needs values in [0, 1]: apply it between the tile's own extremes.
        low, high = tf.reduce_min(image), tf.reduce_max(image)
        span = tf.maximum(high - low, 1e-6)
        gamma = tf.exp(draws[0] * config.gamma)
        image = low + span * ((image - low) / span) ** gamma
    if config.contrast > 0:
        mean = tf.reduce_mean(image)
        image = mean + (1.0 + draws[1] * config.contrast) * (image - mean)
    return image


def _elasticdeform_tile(stack, top, left, grid, input_size, margin, order):
    """The reference backend: elasticdeform on a mirrored window around the tile (NumPy)."""
    import elasticdeform  # only this backend needs it

    # The spline through the control points can overshoot them a little: leave room.
    pad = int(np.ceil(2 * np.abs(grid).max())) + 2
    rows = mirror_index(np.arange(top - pad, top + input_size + pad), stack.shape[0])
    cols = mirror_index(np.arange(left - pad, left + input_size + pad), stack.shape[1])
    window = stack[np.ix_(rows, cols)]
    inner = slice(pad, pad + input_size)
    image, labels, weights = elasticdeform.deform_grid(
        [window[..., :-2], window[..., -2], window[..., -1]],
        grid,
        order=[order, 0, 1],
        mode="mirror",
        crop=(inner, inner),
        axis=[(0, 1), (0, 1), (0, 1)],
    )
    crop = slice(margin, input_size - margin)
    return image, np.stack([labels[crop, crop], weights[crop, crop]], axis=-1)


def _stacked(image: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor, cubic: bool) -> tf.Tensor:
    """One tensor per image, [image channels..., label, weight]: one deformation moves all
    of it, and its last two channels are already the targets' layout."""
    if cubic:
        image = augment.spline_prefilter(image)  # B-spline coefficients, once per image
    return tf.concat([image, tf.cast(labels, tf.float32)[..., None], weights[..., None]], -1)


def _window(
    stack: tf.Tensor,
    top: tf.Tensor,
    left: tf.Tensor,
    grid: tf.Tensor,
    config: AugmentConfig,
    input_size: int,
    margin: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The input tile at (top, left) and the targets of its centre, deformed by `grid` as
    configured (in the graph, or by elasticdeform), or cut as they are."""
    channels = int(stack.shape[-1]) - 2
    inner = slice(margin, input_size - margin)
    if not config.elastic:
        window = _mirrored_crop(stack, top, left, input_size)
    elif config.elastic_backend == "tensorflow":
        # Per channel: the image as configured, labels without inventing classes, weights
        # smooth.
        modes = (config.interpolation,) * channels + ("nearest", "linear")
        origin = tf.stack([top, left])
        window = augment.deform(stack, grid, modes, origin, (input_size, input_size))
    else:
        order = 3 if config.interpolation == "cubic" else 1
        return tf.numpy_function(
            lambda *args: _elasticdeform_tile(*args, input_size, margin, order),
            [stack, top, left, grid],
            [tf.float32, tf.float32],
            stateful=False,
        )
    return window[..., :channels], window[inner, inner, channels:]


def training_dataset(
    examples: Sequence[Example],
    input_size: int,
    output_size: int,
    batch_size: int,
    config: AugmentConfig | None = None,
    seed: int = 0,
    stream: int = 0,
) -> tf.data.Dataset:
    """Endless batches of augmented (image tile, targets) for `model.fit`.

    `input_size` and `output_size` are the model's square tile sizes (equal for
    same-padding models). Seeded: the same seed gives the same batches. Parallel input
    pipelines (one per worker) pass distinct `stream`s to draw independent tiles.
    """
    if not examples:
        raise ValueError("training_dataset needs at least one example")
    margin = _check_tiles(input_size, output_size)
    config = config or AugmentConfig()
    channels = examples[0].image.shape[-1]
    cubic = config.elastic and config.elastic_backend == "tensorflow"
    cubic = cubic and config.interpolation == "cubic"

    @_without_autograph
    def make_tile(index: tf.Tensor, stack: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in([seed, stream], index), 5
        )
        top = _random_origin(seeds[0], tf.shape(stack)[0], output_size) - margin
        left = _random_origin(seeds[1], tf.shape(stack)[1], output_size) - margin
        grid = augment.random_displacement_grid(
            seeds[2], config.elastic_grid, config.elastic_sigma
        )
        tile, targets = _window(stack, top, left, grid, config, input_size, margin)
        tile, targets = _flip_rotate(tile, targets, seeds[3], config)
        tile = _intensity(tile, seeds[4], config)
        tile = tf.ensure_shape(tile, (input_size, input_size, channels))
        return tile, tf.ensure_shape(targets, (output_size, output_size, 2))

    stacks = (
        _example_dataset(examples)
        .map(_without_autograph(lambda *arrays: _stacked(*arrays, cubic)))
        .cache()
    )
    stacks = stacks.repeat().shuffle(len(examples), seed=seed)
    return (
        tf.data.Dataset.zip(tf.data.Dataset.counter(), stacks)
        .map(make_tile, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _validation_batches(examples: Sequence[Example], output_size: int, batch_size: int) -> int:
    """Batches in one pass of `validation_dataset`: its tile grid, counted up front."""
    tiles = sum(
        -(-example.labels.shape[0] // output_size) * -(-example.labels.shape[1] // output_size)
        for example in examples
    )
    return -(-tiles // batch_size)


def validation_dataset(
    examples: Sequence[Example], input_size: int, output_size: int, batch_size: int = 1
) -> tf.data.Dataset:
    """Whole validation images, unaugmented, as a grid of tiles covering every pixel once.

    Output tiles do not overlap; the part of a tile beyond the image has weight 0.
    """
    if not examples:
        raise ValueError("validation_dataset needs at least one example")
    margin = _check_tiles(input_size, output_size)

    @_without_autograph
    def tiles(image, labels, weights):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        rows = tf.range(0, height, output_size)
        cols = tf.range(0, width, output_size)
        tops, lefts = tf.meshgrid(rows, cols, indexing="ij")
        inside = tf.cast(
            (tf.range(output_size)[:, None] < height - tf.reshape(tops, (-1, 1, 1)))
            & (tf.range(output_size)[None, :] < width - tf.reshape(lefts, (-1, 1, 1))),
            tf.float32,
        )

        def one_tile(origin):
            top, left = origin[0], origin[1]
            tile = _mirrored_crop(image, top - margin, left - margin, input_size)
            tile_labels = _mirrored_crop(labels, top, left, output_size)
            tile_weights = _mirrored_crop(weights, top, left, output_size)
            return tile, tf.stack([tf.cast(tile_labels, tf.float32), tile_weights], -1)

        origins = tf.stack([tf.reshape(tops, [-1]), tf.reshape(lefts, [-1])], axis=-1)
        tile_images, targets = tf.map_fn(
            one_tile,
            origins,
            fn_output_signature=(tf.float32, tf.float32),
        )
        targets = tf.stack([targets[..., 0], targets[..., 1] * inside], axis=-1)
        return tf.data.Dataset.from_tensor_slices((tile_images, targets))

    # The size is known up front and declared: Keras starts each pass afresh only over
    # data of known size (otherwise a distributed fit finds the previous pass exhausted).
    batches = _validation_batches(examples, output_size, batch_size)
    return (
        _example_dataset(examples)
        .cache()
        .flat_map(tiles)
        .batch(batch_size)
        .apply(tf.data.experimental.assert_cardinality(batches))
        .prefetch(tf.data.AUTOTUNE)
    )

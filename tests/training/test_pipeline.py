"""tf.data pipelines: tile geometry, consistency of image and targets, seeding."""

import numpy as np
import pytest
import tensorflow as tf

from unet_keras.io.normalization import fit_normalization
from unet_keras.io.readers import load_dataset
from unet_keras.io.sample import Sample
from unet_keras.record import MaskConfig
from unet_keras.training import pipeline
from unet_keras.training.prepare import Example, prepare_examples
from unet_keras.training.training_settings import AugmentConfig

NO_AUGMENTATION = AugmentConfig(elastic=False, flips=False, rotations=False)
MASKS = MaskConfig((0, 255))


def _threshold_examples(count=3, shape=(40, 52), seed=0):
    """Examples whose labels are exactly the threshold of a smooth image at 0."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        coarse = rng.normal(size=(shape[0] // 8 + 2, shape[1] // 8 + 2))
        image = tf.image.resize(coarse[..., None], (shape[0] + 16, shape[1] + 16), "bicubic")
        image = image.numpy()[8 : 8 + shape[0], 8 : 8 + shape[1]].astype(np.float32)
        labels = (image[..., 0] > 0).astype(np.int32)
        weights = 1.0 + labels.astype(np.float32)
        examples.append(Example(f"ex{index}", image, labels, weights))
    return examples


def _agreement(batch_images, batch_targets, margin):
    """Fraction of target pixels whose label equals the threshold of the image tile at 0."""
    size = batch_targets.shape[1]
    centre = batch_images[:, margin : margin + size, margin : margin + size, 0]
    return np.mean((centre > 0) == (batch_targets[..., 0] > 0.5))


def test_training_tiles_have_the_model_geometry():
    dataset = pipeline.training_dataset(_threshold_examples(), 36, 20, batch_size=4)
    images, targets = next(iter(dataset))
    assert images.shape == (4, 36, 36, 1) and images.dtype == tf.float32
    assert targets.shape == (4, 20, 20, 2)
    assert set(np.unique(targets[..., 0])) <= {0.0, 1.0}
    assert float(tf.reduce_min(targets[..., 1])) >= 1.0 - 1e-5


def test_tile_without_augmentation_is_a_crop_with_mirrored_context():
    example = _threshold_examples(1, (30, 30))[0]
    dataset = pipeline.training_dataset([example], 30, 10, 1, NO_AUGMENTATION, seed=5)
    images, targets = next(iter(dataset))
    # The output tile lies inside the image; find it from its labels' image content.
    tile = images[0, ..., 0].numpy()
    padded = np.pad(example.image[..., 0], 10, mode="reflect")
    matches = [
        (top, left)
        for top in range(0, 21)
        for left in range(0, 21)
        if np.array_equal(padded[top : top + 30, left : left + 30], tile)
    ]
    assert len(matches) == 1
    top, left = matches[0]
    np.testing.assert_array_equal(
        targets[0, ..., 0], example.labels[top : top + 10, left : left + 10]
    )


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(gamma=0.0, contrast=0.0),
        AugmentConfig(interpolation="cubic", gamma=0.0, contrast=0.0),
        AugmentConfig(elastic_backend="elasticdeform", gamma=0.0, contrast=0.0),
    ],
    ids=["tensorflow-linear", "tensorflow-cubic", "elasticdeform-linear"],
)
def test_deformed_targets_follow_the_deformed_image(config):
    examples = _threshold_examples(3, (48, 48))
    dataset = pipeline.training_dataset(examples, 40, 24, 8, config, seed=1)
    images, targets = next(iter(dataset))
    assert _agreement(images.numpy(), targets.numpy(), 8) >= 0.97
    # The deformation really moved pixels: the tiles are not plain crops of the examples.
    plain = pipeline.training_dataset(examples, 40, 24, 8, NO_AUGMENTATION, seed=1)
    assert not np.allclose(next(iter(plain))[0], images)


def test_seeded_runs_are_reproducible_and_streams_independent():
    examples = _threshold_examples()
    config = AugmentConfig(gamma=0.2, contrast=0.2)

    def first_batches(seed, stream=0):
        dataset = pipeline.training_dataset(examples, 36, 20, 2, config, seed, stream)
        return [batch[0].numpy() for batch in dataset.take(3)]

    first, again = first_batches(7), first_batches(7)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first_batches(8)[0])
    # One pipeline per worker: the same seed, other tiles.
    assert not np.allclose(first[0], first_batches(7, stream=1)[0])


def test_intensity_changes_keep_the_image_order():
    # Gamma and contrast are monotonic: the pixel ranking of a tile survives them.
    example = _threshold_examples(1, (32, 32))[0]
    config = AugmentConfig(elastic=False, flips=False, rotations=False, gamma=0.3, contrast=0.3)
    changed = next(iter(pipeline.training_dataset([example], 32, 32, 1, config, seed=2)))[0]
    plain = next(iter(pipeline.training_dataset([example], 32, 32, 1, NO_AUGMENTATION, seed=2)))
    assert not np.allclose(changed, plain[0])
    np.testing.assert_array_equal(
        np.argsort(changed.numpy().ravel()), np.argsort(plain[0].numpy().ravel())
    )


def test_augmentation_runs_without_python_ops():
    dataset = pipeline.training_dataset(_threshold_examples(), 36, 20, 2)
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    functions = {f.signature.name: {n.op for n in f.node_def} for f in graph.library.function}
    python = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    with_python = [name for name, ops in functions.items() if ops & python]
    # Only the source that hands over the prepared examples, once before the cache, does.
    assert with_python and all("load_example" in name for name in with_python)
    assert any("make_tile" in name for name in functions)
    assert any("deform" in name and "GatherV2" in ops for name, ops in functions.items())


def test_validation_tiles_cover_each_pixel_once():
    examples = _threshold_examples(2, (45, 31))
    dataset = pipeline.validation_dataset(examples, 28, 16, batch_size=1)
    tiles = [(image.numpy()[0], targets.numpy()[0]) for image, targets in dataset]
    per_image = 3 * 2  # ceil(45 / 16) x ceil(31 / 16)
    assert len(tiles) == 2 * per_image
    for index, example in enumerate(examples):
        canvas = np.full((48, 32), -1.0)
        weights = np.zeros((48, 32))
        for k, (image, targets) in enumerate(tiles[index * per_image : (index + 1) * per_image]):
            top, left = 16 * (k // 2), 16 * (k % 2)
            canvas[top : top + 16, left : left + 16] = targets[..., 0]
            weights[top : top + 16, left : left + 16] = targets[..., 1]
            # Input tiles carry 6 px of context around their output tile.
            assert image.shape == (28, 28, 1)
        np.testing.assert_array_equal(canvas[:45, :31], example.labels)
        np.testing.assert_array_equal(weights[:45, :31], example.weights)
        assert not weights[45:].any() and not weights[:, 31:].any()


def test_bad_tile_sizes_are_named():
    with pytest.raises(ValueError, match="input 30, output 25"):
        pipeline.training_dataset(_threshold_examples(1), 30, 25, 1)


@pytest.mark.slow
def test_isbi_threshold_mask_survives_deformation(isbi):
    # A mask made by thresholding an image, deformed with it, still equals the threshold
    # of the deformed image: image and targets stay aligned through the whole pipeline.
    # Raw sections are noisy: about 4 % of their pixels lie so close to any threshold that
    # linear resampling flips them (elasticdeform itself agrees on only 95.8 % of ISBI
    # section 00), and blurring adds boundary pixels that linear and nearest resampling
    # split differently (98.5 % for elasticdeform). The image here has the sections' real
    # geometry without either: their label images, 0 and 255.
    smoothed = [s.mask[..., None] for s in load_dataset(isbi / "train")[:4]]
    normalization = fit_normalization(smoothed)
    thresholded = [
        Sample(f"s{i}", image, np.where(image[..., 0] > 128, 255, 0).astype(np.uint8))
        for i, image in enumerate(smoothed)
    ]
    examples = prepare_examples(thresholded, MASKS, normalization)
    threshold = (128 - normalization.offset[0]) / normalization.scale[0]
    config = AugmentConfig(gamma=0.0, contrast=0.0)
    dataset = pipeline.training_dataset(examples, 284, 100, 4, config, seed=0)
    images, targets = next(iter(dataset))
    centre = images.numpy()[:, 92:192, 92:192, 0]
    agreement = np.mean((centre > threshold) == (targets.numpy()[..., 0] > 0.5))
    assert agreement >= 0.99

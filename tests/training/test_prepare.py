"""From samples to examples: labels, normalisation, weight maps, the split by image, and
the mask convention and model shape a run settles."""

import numpy as np
import pytest

from unet_keras.io.normalization import fit_normalization
from unet_keras.io.sample import Sample
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.record import MaskConfig, NormalizationConfig
from unet_keras.training.prepare import prepare_data, prepare_examples, split_by_image
from unet_keras.training.training_settings import AugmentConfig, TrainConfig

MASKS = MaskConfig((0, 255))


def test_prepare_examples_normalises_labels_and_weights():
    samples = synthetic_em_images(2, (64, 64))
    normalization = fit_normalization([s.image for s in samples])
    examples = prepare_examples(samples, MASKS, normalization)
    assert [e.name for e in examples] == [s.name for s in samples]
    example = examples[0]
    assert example.image.dtype == np.float32 and example.image.shape == (64, 64, 1)
    assert abs(float(np.mean([e.image.mean() for e in examples]))) < 0.1
    np.testing.assert_array_equal(example.labels, samples[0].mask // 255)
    assert example.weights.dtype == np.float32 and example.weights.min() > 0
    # The border term lifts membrane pixels between cells far above the class weight.
    assert example.weights.max() > 5


def test_prepare_examples_needs_masks():
    image = np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match=r"unlabelled\.png: training needs a mask"):
        prepare_examples([Sample("unlabelled.png", image)], MASKS, NormalizationConfig())


def test_split_is_by_whole_image_and_seeded():
    examples = [Sample(f"ex{i}", np.zeros((4, 4, 1), np.uint8)) for i in range(5)]
    training, validation = split_by_image(examples, 2, seed=3)
    assert len(validation) == 2 and len(training) == 3
    assert not {e.name for e in training} & {e.name for e in validation}
    again = split_by_image(examples, 2, seed=3)[1]
    assert [e.name for e in again] == [e.name for e in validation]
    named = split_by_image(examples, ["ex4"])[1]
    assert [e.name for e in named] == ["ex4"]
    with pytest.raises(ValueError, match="nope"):
        split_by_image(examples, ["nope"])
    with pytest.raises(ValueError, match="validation count"):
        split_by_image(examples, 5)


def test_unlabelled_pixels_stay_unlabelled_through_the_pipeline():
    """Sparse masks: unlabelled pixels are IGNORED with weight 0 in the examples, and in
    every deformed, flipped training tile the losses see them with weight 0."""
    from unet_keras.io.masks import IGNORED
    from unet_keras.training.losses import split_targets
    from unet_keras.training.pipeline import training_dataset
    from unet_keras.training.training_settings import AugmentConfig

    samples = synthetic_em_images(2, (96, 96))
    for sample in samples:
        sample.mask[:, 48:] = 128  # the right half carries no label
    sparse = MaskConfig((0, 255), ignore_value=128)
    normalization = fit_normalization([s.image for s in samples])
    examples = prepare_examples(samples, sparse, normalization)
    assert (examples[0].labels[:, 48:] == IGNORED).all()
    assert (examples[0].weights[:, 48:] == 0).all() and examples[0].weights[:, :48].min() > 0
    tiles = training_dataset(examples, 60, 60, 4, AugmentConfig(), seed=1).take(3)
    seen_unlabelled = 0
    for _, targets in tiles:
        labels, weights = split_targets(targets)
        unlabelled = targets[..., 0].numpy() < 0
        seen_unlabelled += unlabelled.sum()
        assert (weights.numpy()[unlabelled] == 0).all()
        assert labels.numpy().min() >= 0
    assert seen_unlabelled > 0


def test_the_record_names_the_symmetries_training_draws_from(synthetic_data):
    """Test-time augmentation reads them: it may average only what the model learnt."""
    augment = AugmentConfig(flips=False, rotations=True)
    config = TrainConfig(data=str(synthetic_data), validation=1, augment=augment)
    assert prepare_data(config).record.symmetries == "rotations"
    assert prepare_data(TrainConfig(data=str(synthetic_data), validation=1)).record.symmetries == (
        "flips"
    )

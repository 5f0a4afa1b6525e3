"""Tests for unet_keras.training.metrics, and the losses and metrics together in a tiny model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet_keras.geometry import output_size
from unet_keras.model import build_unet
from unet_keras.training.losses import (
    CombinedLoss,
    CrossEntropySkeletonRecall,
    DiceLoss,
    WeightedCrossEntropy,
)
from unet_keras.training.metrics import Dice, IoU, PixelError


def reference_scores(truth: np.ndarray, guess: np.ndarray, classes: list[int]):
    """Per-class (IoU, Dice) from label and predicted-class arrays."""
    iou, dice = [], []
    for k in classes:
        t, g = truth == k, guess == k
        overlap, union = (t & g).sum(), (t | g).sum()
        iou.append(overlap / union)
        dice.append(2 * overlap / (t.sum() + g.sum()))
    return np.array(iou), np.array(dice)


@pytest.fixture
def binary_batches():
    """Two batches of (targets with weights, sigmoid predictions), plus all labels/guesses."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (2, 3, 4, 5)).astype("float32")
    probs = rng.uniform(0, 1, (2, 3, 4, 5, 1)).astype("float32")
    weights = rng.uniform(1, 5, labels.shape).astype("float32")
    batches = [(np.stack([labels[i], weights[i]], -1), probs[i]) for i in range(2)]
    return batches, labels, (probs[..., 0] >= 0.5).astype(int)


@pytest.fixture
def three_class_batches():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (2, 2, 6, 6)).astype("float32")
    probs = rng.dirichlet(np.ones(3), (2, 2, 6, 6)).astype("float32")
    batches = [(labels[i][..., None], probs[i]) for i in range(2)]
    return batches, labels, probs.argmax(-1)


def accumulate(metric, batches):
    for y_true, y_pred in batches:
        metric.update_state(y_true, y_pred)
    return float(metric.result())


def test_binary_scores_accumulate_over_batches(binary_batches):
    batches, labels, guesses = binary_batches
    iou, dice = reference_scores(labels, guesses, [1])
    assert accumulate(IoU(), batches) == pytest.approx(iou[0], rel=1e-6)
    assert accumulate(Dice(), batches) == pytest.approx(dice[0], rel=1e-6)
    first_batch_only = accumulate(IoU(), batches[:1])
    assert first_batch_only != pytest.approx(iou[0])
    background_iou, _ = reference_scores(labels, guesses, [0])
    assert accumulate(IoU(class_id=0), batches) == pytest.approx(background_iou[0], rel=1e-6)


def test_multiclass_scores_average_over_classes(three_class_batches):
    batches, labels, guesses = three_class_batches
    iou, dice = reference_scores(labels, guesses, [0, 1, 2])
    assert accumulate(IoU(classes=3), batches) == pytest.approx(iou.mean(), rel=1e-6)
    assert accumulate(Dice(classes=3), batches) == pytest.approx(dice.mean(), rel=1e-6)
    assert accumulate(Dice(classes=3, class_id=2), batches) == pytest.approx(dice[2], rel=1e-6)


def test_pixel_error_thresholds_and_argmax(binary_batches, three_class_batches):
    for batches, labels, guesses in (binary_batches, three_class_batches):
        assert accumulate(PixelError(), batches) == pytest.approx((labels != guesses).mean())
    # 0.5 counts as foreground.
    assert accumulate(PixelError(), [(np.ones((1, 1, 2)), np.full((1, 1, 2, 1), 0.5))]) == 0.0


def test_absent_class_and_reset():
    metric = IoU()
    background = np.zeros((1, 4, 4), "float32")
    assert accumulate(metric, [(background, np.zeros((1, 4, 4, 1), "float32"))]) == 1.0
    assert accumulate(metric, [(background, np.ones((1, 4, 4, 1), "float32"))]) == 0.0
    metric.reset_state()
    assert float(metric.labelled[0]) == 0.0 and float(metric.overlap[1]) == 0.0
    # Classes missing from both labels and predictions are left out of the mean.
    three = IoU(classes=3)
    probs = np.eye(3, dtype="float32")[np.zeros((1, 2, 2), int)]
    assert accumulate(three, [(np.zeros((1, 2, 2), "float32"), probs)]) == 1.0


def test_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="sample_weight"):
        PixelError().update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 1)), np.ones(1))
    with pytest.raises(ValueError, match="3 output channel"):
        IoU(classes=3).update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="class_id"):
        Dice(classes=1, class_id=2)


@pytest.mark.parametrize(
    "metric", [IoU(classes=3, class_id=1, name="iou_1"), Dice(classes=2), PixelError()]
)
def test_metrics_serialise(metric):
    config = metric.get_config()
    assert type(metric).from_config(config).get_config() == config
    serialised = keras.metrics.serialize(metric)
    assert serialised["registered_name"].startswith("unet_keras>")
    assert keras.metrics.deserialize(serialised).get_config() == config


def tiny_dataset(size: int, classes: int, padding: str) -> tf.data.Dataset:
    """Two batches of (image, targets) with a non-uniform weight map, as the pipeline yields."""
    rng = np.random.default_rng(5)
    out = output_size(size, 2, padding)
    images = rng.random((4, size, size, 1), dtype="float32")
    labels = rng.integers(0, max(classes, 2), (4, out, out)).astype("float32")
    weights = rng.uniform(1, 3, (4, out, out)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, np.stack([labels, weights], -1))).batch(2)


def compiled_tiny_model(classes: int, padding: str, loss, run_eagerly: bool) -> keras.Model:
    model = build_unet(classes=classes, depth=2, filters=2, padding=padding)
    metrics = [IoU(classes), Dice(classes), PixelError()]
    # XLA compilation only slows a two-step CPU run.
    model.compile(
        optimizer="adam", loss=loss, metrics=metrics, run_eagerly=run_eagerly, jit_compile=False
    )
    return model


@pytest.mark.slow
@pytest.mark.parametrize("loss_class", [CombinedLoss, CrossEntropySkeletonRecall])
def test_tiny_model_fits_in_graph_mode_and_reloads(loss_class, tmp_path):
    model = compiled_tiny_model(1, "valid", loss_class(), run_eagerly=False)
    data = tiny_dataset(44, 1, "valid")
    history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert all(0.0 <= history[name][0] <= 1.0 for name in ("iou", "dice", "pixel_error"))

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, loss_class)
    images = next(iter(data))[0]
    np.testing.assert_array_equal(loaded(images), model(images))


# Eager keeps these quick: tracing the training graph costs seconds even for a tiny model.
@pytest.mark.parametrize(
    "classes,padding,loss",
    [(3, "same", WeightedCrossEntropy()), (2, "valid", DiceLoss(exclude_background=True))],
)
def test_compiled_losses_and_metrics_survive_a_keras_file(tmp_path, classes, padding, loss):
    model = compiled_tiny_model(classes, padding, loss, run_eagerly=True)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    data = tiny_dataset(44 if padding == "valid" else 16, classes, padding)
    before = model.evaluate(data, verbose=0, return_dict=True)
    after = loaded.evaluate(data, verbose=0, return_dict=True)
    assert set(after) == {"loss", "iou", "dice", "pixel_error"}
    assert after == pytest.approx(before, rel=1e-6)


def test_pixels_of_weight_zero_are_not_counted(binary_batches):
    # Weight 0 marks pixels outside the image (validation tiles at the border).
    batches, labels, guesses = binary_batches
    masked = []
    for y_true, y_pred in batches:
        y_true = y_true.copy()
        y_true[:, :, 2:, 1] = 0.0
        masked.append((y_true, y_pred))
    inside_labels, inside_guesses = labels[..., :2], guesses[..., :2]
    iou, dice = reference_scores(inside_labels, inside_guesses, [1])
    assert accumulate(IoU(), masked) == pytest.approx(iou[0], rel=1e-6)
    assert accumulate(Dice(), masked) == pytest.approx(dice[0], rel=1e-6)
    error = np.mean(inside_labels != inside_guesses)
    assert accumulate(PixelError(), masked) == pytest.approx(error, rel=1e-6)

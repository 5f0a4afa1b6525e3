"""Tests for unet_keras.training.losses against NumPy references on small arrays."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet_keras.training.losses import (
    CombinedLoss,
    CrossEntropySkeletonRecall,
    DiceLoss,
    SkeletonRecallLoss,
    WeightedCrossEntropy,
    check_predictions,
    soft_skeleton,
    split_targets,
)

EPS = keras.config.epsilon()


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def binary():
    """Sigmoid predictions, 0/1 labels and a non-uniform weight map for 2 images of 5x6."""
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.02, 0.98, (2, 5, 6, 1)).astype("float32")
    labels = rng.integers(0, 2, (2, 5, 6)).astype("float32")
    weights = rng.uniform(0.5, 4.0, (2, 5, 6)).astype("float32")
    return probs, labels, weights


@pytest.fixture
def three_class():
    """Softmax predictions over 3 classes, labels and a non-uniform weight map."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 4, 5, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    labels = rng.integers(0, 3, (2, 4, 5)).astype("float32")
    weights = rng.uniform(0.5, 4.0, (2, 4, 5)).astype("float32")
    return probs, labels, weights


def targets(labels, weights):
    return np.stack([labels, weights], axis=-1)


def reference_ce(probs, labels, weights):
    """Per-image mean of weight * -log(p_true)."""
    if probs.shape[-1] == 1:
        p = np.clip(probs[..., 0].astype("float64"), EPS, 1 - EPS)
        pixel = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        p_true = np.take_along_axis(probs, labels.astype(int)[..., None], -1)[..., 0]
        pixel = -np.log(np.clip(p_true.astype("float64"), EPS, 1.0))
    return (weights * pixel).mean(axis=(1, 2))


def reference_dice_loss(probs, labels, smooth=1.0, skip_background=False):
    """Per-image one minus the mean soft Dice over the scored classes."""
    if probs.shape[-1] == 1:
        truth = (labels == 1)[..., None].astype("float64")
    else:
        truth = np.eye(probs.shape[-1])[labels.astype(int)]
        if skip_background:
            truth, probs = truth[..., 1:], probs[..., 1:]
    overlap = (probs * truth).sum(axis=(1, 2))
    total = probs.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    return 1 - ((2 * overlap + smooth) / (total + smooth)).mean(axis=-1)


def test_split_targets_layouts():
    labels = np.array([[[0.0, 0.9999], [2.0, 1.0]]], "float32")
    weights = np.array([[[1.0, 2.0], [3.0, 4.0]]], "float32")
    for y_true, expected_weights in [
        (targets(labels, weights), weights),
        (labels, np.ones_like(weights)),
        (labels[..., None], np.ones_like(weights)),
    ]:
        got_labels, got_weights = split_targets(y_true)
        assert keras.backend.standardize_dtype(got_labels.dtype) == "int32"
        np.testing.assert_array_equal(numpy(got_labels), [[[0, 1], [2, 1]]])
        np.testing.assert_array_equal(numpy(got_weights), expected_weights)
    with pytest.raises(ValueError, match=r"targets must be .*got shape \(1, 2, 2, 3\)"):
        split_targets(np.zeros((1, 2, 2, 3), "float32"))


def test_predictions_must_match_the_targets_size():
    labels, _ = split_targets(np.zeros((1, 4, 4), "float32"))
    with pytest.raises(ValueError, match="cropped to the output"):
        check_predictions(labels, np.zeros((1, 6, 6, 1), "float32"))
    with pytest.raises(ValueError, match=r"\[B, h, w, K\]"):
        check_predictions(labels, np.zeros((1, 4, 4), "float32"))


@pytest.mark.parametrize("case", ["binary", "three_class"])
def test_weighted_cross_entropy_matches_numpy(case, request):
    probs, labels, weights = request.getfixturevalue(case)
    per_image = WeightedCrossEntropy(reduction=None)(targets(labels, weights), probs)
    np.testing.assert_allclose(numpy(per_image), reference_ce(probs, labels, weights), rtol=1e-5)
    batch = WeightedCrossEntropy()(targets(labels, weights), probs)
    np.testing.assert_allclose(float(batch), reference_ce(probs, labels, weights).mean(), 1e-5)


@pytest.mark.parametrize("case", ["binary", "three_class"])
def test_weight_map_scales_the_loss(case, request):
    probs, labels, weights = request.getfixturevalue(case)
    loss = WeightedCrossEntropy()
    weighted = float(loss(targets(labels, weights), probs))
    plain = float(loss(labels, probs))
    assert plain == pytest.approx(float(loss(targets(labels, np.ones_like(weights)), probs)))
    assert weighted != pytest.approx(plain, rel=1e-3)
    assert float(loss(targets(labels, 2 * weights), probs)) == pytest.approx(2 * weighted)


def test_cross_entropy_is_finite_for_saturated_wrong_predictions():
    probs = np.array([[[[0.0], [1.0]]]], "float32")
    labels = np.array([[[1.0, 0.0]]], "float32")
    value = float(WeightedCrossEntropy()(labels, probs))
    # Both pixels are clipped to eps (float32 rounds 1 - eps a little), so about -log(eps).
    assert np.isfinite(value) and value == pytest.approx(-np.log(EPS), rel=0.02)


@pytest.mark.parametrize("case", ["binary", "three_class"])
def test_dice_loss_matches_numpy(case, request):
    probs, labels, weights = request.getfixturevalue(case)
    got = DiceLoss(smooth=0.5, reduction=None)(targets(labels, weights), probs)
    np.testing.assert_allclose(numpy(got), reference_dice_loss(probs, labels, 0.5), rtol=1e-5)


def test_dice_loss_can_leave_out_the_background(three_class):
    probs, labels, _ = three_class
    got = numpy(DiceLoss(exclude_background=True, reduction=None)(labels, probs))
    np.testing.assert_allclose(got, reference_dice_loss(probs, labels, 1.0, True), rtol=1e-5)
    assert not np.allclose(got, reference_dice_loss(probs, labels, 1.0, False))


def test_dice_loss_of_a_perfect_prediction_is_about_zero(binary, three_class):
    labels = binary[1]
    assert float(DiceLoss()(labels, labels[..., None])) == pytest.approx(0.0, abs=1e-6)
    labels = three_class[1]
    one_hot = np.eye(3, dtype="float32")[labels.astype(int)]
    assert float(DiceLoss()(labels, one_hot)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("case", ["binary", "three_class"])
def test_combined_loss_is_the_sum(case, request):
    probs, labels, weights = request.getfixturevalue(case)
    y_true = targets(labels, weights)
    combined = float(CombinedLoss(smooth=2.0)(y_true, probs))
    parts = float(WeightedCrossEntropy()(y_true, probs)) + float(DiceLoss(2.0)(y_true, probs))
    assert combined == pytest.approx(parts, rel=1e-6)


@pytest.mark.parametrize(
    "loss_class",
    [WeightedCrossEntropy, DiceLoss, CombinedLoss, SkeletonRecallLoss, CrossEntropySkeletonRecall],
)
def test_float16_predictions_give_a_float32_loss(loss_class, three_class):
    probs, labels, weights = three_class
    y_true = targets(labels, weights)
    half = loss_class()(y_true, keras.ops.convert_to_tensor(probs, "float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    assert float(half) == pytest.approx(float(loss_class()(y_true, probs)), rel=1e-3)


@pytest.mark.parametrize(
    "loss",
    [
        WeightedCrossEntropy(name="wce"),
        DiceLoss(smooth=0.25, exclude_background=True),
        CombinedLoss(smooth=3.0, exclude_background=True, reduction="sum"),
        SkeletonRecallLoss(iterations=3, smooth=0.5),
        CrossEntropySkeletonRecall(weight=0.25, iterations=4, smooth=2.0, boundary_class=2),
    ],
)
def test_losses_serialise(loss, three_class):
    probs, labels, weights = three_class
    y_true = targets(labels, weights)
    assert type(loss).from_config(loss.get_config()).get_config() == loss.get_config()
    serialised = keras.losses.serialize(loss)
    assert serialised["registered_name"].startswith("unet_keras>")
    restored = keras.losses.deserialize(serialised)
    assert type(restored) is type(loss)
    assert float(restored(y_true, probs)) == pytest.approx(float(loss(y_true, probs)))


def test_dice_loss_leaves_out_pixels_of_weight_zero(binary):
    # Weight 0 marks pixels outside the image (validation tiles at the border).
    probs, labels, weights = binary
    weights = weights.copy()
    weights[:, :, 3:] = 0.0
    got = numpy(DiceLoss()(targets(labels, weights), probs))
    expected = reference_dice_loss(probs[:, :, :3], labels[:, :, :3]).mean()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", ["binary", "three_class"])
@pytest.mark.parametrize(
    "loss",
    [
        WeightedCrossEntropy(),
        DiceLoss(),
        CombinedLoss(),
        SkeletonRecallLoss(),
        CrossEntropySkeletonRecall(),
    ],
)
def test_unlabelled_pixels_give_zero_gradient_and_change_no_loss_or_metric(case, loss, request):
    """Pixels of class IGNORED (-1), however weighted: no gradient flows from them, and
    whatever is predicted there leaves every loss and metric as it was."""
    import tensorflow as tf

    from unet_keras.training.metrics import IoU, PixelError

    probs, labels, weights = request.getfixturevalue(case)
    unlabelled = np.zeros(labels.shape, bool)
    unlabelled[:, :2] = True
    sparse = targets(np.where(unlabelled, -1.0, labels), weights)
    predictions = tf.Variable(probs)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss(sparse, predictions))
    gradient = tape.gradient(value, predictions).numpy()
    assert np.isfinite(float(value))
    assert (gradient[unlabelled] == 0).all() and (gradient[~unlabelled] != 0).any()
    channels = probs.shape[-1]
    other = probs.copy()
    random = np.random.default_rng(3).dirichlet(np.ones(max(channels, 2)), unlabelled.sum())
    other[unlabelled] = random[:, :channels]
    assert float(loss(sparse, other)) == pytest.approx(float(value))
    for metric in (IoU(classes=channels), PixelError()):
        scores = []
        for prediction in (probs, other):
            metric.reset_state()
            metric.update_state(sparse, prediction)
            scores.append(float(metric.result()))
        assert scores[0] == scores[1]


def membrane_grid(gap: int = 0) -> np.ndarray:
    """Cells (1) of a 32x32 image cut into four by a 3 px membrane cross (0); `gap` pixels of
    the vertical membrane's lower arm opened into cell, joining the two lower cells."""
    labels = np.ones((32, 32), "float32")
    labels[15:18, :] = 0
    labels[:, 15:18] = 0
    if gap:
        labels[24 : 24 + gap, 15:18] = 1
    return labels


def test_soft_skeleton_of_a_binary_bar_is_its_centre_line():
    bar = np.zeros((1, 9, 20, 1), "float32")
    bar[0, 3:6, 2:18] = 1  # 3 px wide
    skeleton = numpy(soft_skeleton(keras.ops.convert_to_tensor(bar), 5))[0, ..., 0]
    assert set(np.unique(skeleton)) <= {0.0, 1.0}
    assert skeleton[4, 4:16].all()  # the centre row, away from the ends
    assert not skeleton[3].any() and not skeleton[5].any()
    assert not skeleton[bar[0, ..., 0] == 0].any()


def test_skeleton_recall_is_zero_for_the_truth_and_one_for_no_membrane():
    labels = membrane_grid()[None]
    cells = labels[..., None]
    assert float(SkeletonRecallLoss(smooth=0.0)(labels, cells)) == pytest.approx(0.0, abs=1e-6)
    assert float(SkeletonRecallLoss(smooth=0.0)(labels, np.ones_like(cells))) == pytest.approx(1.0)
    # Three classes: class 0 is the boundary; the perfect one-hot prediction scores 0 too.
    one_hot = np.eye(3, dtype="float32")[labels.astype(int)]
    assert float(SkeletonRecallLoss(smooth=0.0)(labels, one_hot)) == pytest.approx(0.0, abs=1e-6)
    # The boundary may be another class: here class 2 is where class 0 was.
    relabelled = np.where(labels == 0, 2, labels)
    assert float(
        SkeletonRecallLoss(smooth=0.0, boundary_class=2)(relabelled, one_hot[..., ::-1])
    ) == pytest.approx(0.0, abs=1e-6)
    assert float(
        SkeletonRecallLoss(smooth=0.0, boundary_class=2)(relabelled, one_hot)
    ) == pytest.approx(1.0)
    # One sigmoid channel with the boundary drawn as class 1: the channel itself is it.
    membrane_as_one = SkeletonRecallLoss(smooth=0.0, boundary_class=1)
    assert float(membrane_as_one(1 - labels, 1 - cells)) == pytest.approx(0.0, abs=1e-6)
    assert float(membrane_as_one(1 - labels, cells)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="boundary_class 2 is not one of the 2 classes"):
        SkeletonRecallLoss(boundary_class=2)(labels, cells)


def test_skeleton_recall_charges_a_membrane_gap_not_a_thinner_membrane():
    """Two predictions 9 pixels wrong each, which cross-entropy charges alike: a membrane
    thinner along one arm (the cells stay apart) and a 3 px gap through it (two cells
    joined). Skeleton recall charges only the gap: the true centre line it leaves open."""
    truth = membrane_grid()[None]
    thinner = truth.copy()
    thinner[0, 15, 0:9] = 1  # 9 px of the horizontal membrane's edge row become cell
    gap = membrane_grid(gap=3)[None]
    assert (thinner != truth).sum() == (gap != truth).sum() == 9
    soft = [np.clip(p, 0.01, 0.99)[..., None] for p in (thinner, gap)]
    cross_entropy = [float(WeightedCrossEntropy()(truth, p)) for p in soft]
    assert cross_entropy[0] == pytest.approx(cross_entropy[1], rel=1e-6)
    recall = [float(SkeletonRecallLoss(smooth=0.0)(truth, p[..., None])) for p in (thinner, gap)]
    skeleton = numpy(soft_skeleton(keras.ops.convert_to_tensor(1 - truth[..., None]), 10))[0]
    # The centre lines, but where the arms cross (the soft skeleton has holes there).
    assert skeleton[16, :14, 0].all() and skeleton[16, 19:, 0].all() and skeleton[19:, 16, 0].all()
    assert recall[0] == pytest.approx(0.0, abs=1e-6)
    assert recall[1] == pytest.approx(3 / skeleton.sum(), rel=1e-6)  # 3 of its pixels open


def test_cross_entropy_skeleton_recall_is_the_weighted_sum(binary):
    probs, labels, weights = binary
    y_true = targets(labels, weights)
    got = float(CrossEntropySkeletonRecall(weight=0.3, iterations=2)(y_true, probs))
    parts = float(WeightedCrossEntropy()(y_true, probs)) + 0.3 * float(
        SkeletonRecallLoss(iterations=2)(y_true, probs)
    )
    assert got == pytest.approx(parts, rel=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SkeletonRecallLoss(iterations=0),
        lambda: SkeletonRecallLoss(smooth=-1),
        lambda: SkeletonRecallLoss(boundary_class=-1),
        lambda: CrossEntropySkeletonRecall(weight=-0.1),
    ],
)
def test_skeleton_recall_refuses_bad_arguments(make):
    with pytest.raises(
        ValueError, match=r"(SkeletonRecallLoss|CrossEntropySkeletonRecall) \w+ must be"
    ):
        make()

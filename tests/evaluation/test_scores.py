"""unet_keras.evaluation.scores: ISBI 2012 scores and threshold sweeps."""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from unet_keras.evaluation.scores import (
    best_threshold,
    isbi_pixel_errors,
    mean_scores,
    pixel_counts,
    segmentation_scores,
    threshold_sweep,
)
from unet_keras.io.masks import IGNORED


def cell_grid(size: int = 21, step: int = 5) -> np.ndarray:
    """Binary labels: 1-pixel class-0 membrane lines every `step` pixels around class-1 cells."""
    labels = np.ones((size, size), np.int32)
    labels[::step, :] = 0
    labels[:, ::step] = 0
    return labels


def flood_fill_objects(labels: np.ndarray) -> np.ndarray:
    """Reference object ids: 4-connected components of each nonzero class, class 0 -> 0."""
    objects = np.zeros(labels.shape, np.int64)
    next_id = 0
    for start in zip(*np.nonzero(labels), strict=True):
        if objects[start]:
            continue
        next_id += 1
        objects[start] = next_id
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                inside = 0 <= nr < labels.shape[0] and 0 <= nc < labels.shape[1]
                if inside and not objects[nr, nc] and labels[nr, nc] == labels[r, c]:
                    objects[nr, nc] = next_id
                    queue.append((nr, nc))
    return objects


def brute_force_object_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Adapted Rand by counting every pixel pair, and VI from its definition, truth 0 unscored."""
    truth_ids = flood_fill_objects(truth).ravel()
    predicted_ids = flood_fill_objects(predicted).ravel()
    scored = np.flatnonzero(truth_ids)
    same_truth = same_predicted = same_both = 0
    for i, j in itertools.combinations(scored, 2):
        in_truth = truth_ids[i] == truth_ids[j]
        in_predicted = predicted_ids[i] == predicted_ids[j]
        same_truth += in_truth
        same_predicted += in_predicted
        same_both += in_truth and in_predicted
    precision, recall = same_both / same_predicted, same_both / same_truth
    joint = Counter(zip(truth_ids[scored], predicted_ids[scored], strict=True))
    truth_sizes = Counter(truth_ids[scored])
    predicted_sizes = Counter(predicted_ids[scored])
    n = len(scored)
    # H(P|T) = -sum p(t, p) log2 p(t, p) / p(t), and H(T|P) likewise.
    vi_split = -sum(c / n * math.log2(c / truth_sizes[t]) for (t, _), c in joint.items())
    vi_merge = -sum(c / n * math.log2(c / predicted_sizes[p]) for (_, p), c in joint.items())
    return {
        "adapted_rand_error": 1 - 2 * precision * recall / (precision + recall),
        "rand_precision": precision,
        "rand_recall": recall,
        "vi_split": vi_split,
        "vi_merge": vi_merge,
    }


def test_identical_labels_score_perfectly():
    truth = cell_grid()
    scores = segmentation_scores(truth.copy(), truth, num_classes=2)
    assert all(type(value) is float for value in scores.values())
    assert scores["pixel_error"] == 0.0
    assert scores["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert scores["rand_precision"] == pytest.approx(1.0) == scores["rand_recall"]
    assert scores["vi_split"] == pytest.approx(0.0, abs=1e-12)
    assert scores["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    for key in ("iou_0", "dice_0", "iou_1", "dice_1"):
        assert scores[key] == 1.0


def test_pixel_error_iou_and_dice_on_a_hand_made_4x4_case():
    truth = np.array([[0, 0, 1, 1]] * 4)
    predicted = truth.copy()
    predicted[0, 0] = predicted[0, 1] = 1  # two class-0 pixels called class 1
    predicted[3, 2] = 0  # one class-1 pixel called class 0
    scores = segmentation_scores(predicted, truth, num_classes=3)
    assert scores["pixel_error"] == pytest.approx(3 / 16)
    # Class 1: 8 true, 9 predicted, 7 shared -> IoU 7 / (8 + 9 - 7), Dice 2*7 / (8 + 9).
    assert scores["iou_1"] == pytest.approx(7 / 10)
    assert scores["dice_1"] == pytest.approx(14 / 17)
    # Class 0: 8 true, 7 predicted, 6 shared -> IoU 6 / 9, Dice 12 / 15.
    assert scores["iou_0"] == pytest.approx(6 / 9)
    assert scores["dice_0"] == pytest.approx(12 / 15)
    # Class 2 is in neither image: nothing to get wrong.
    assert scores["iou_2"] == scores["dice_2"] == 1.0


def test_known_split_by_a_predicted_boundary_line():
    truth = np.zeros((6, 11), np.int32)
    truth[1:5, 1:10] = 1  # one 4 x 9 object (36 px) inside a class-0 border
    predicted = truth.copy()
    predicted[:, 5] = 0  # a 4-px boundary line cuts it into two 4 x 4 halves
    scores = segmentation_scores(predicted, truth, num_classes=2)
    # The truth border is not scored, so the 36 scored pixels are all in the one truth object,
    # and within it the prediction has three segments: left half 16, line (id 0) 4, right 16.
    # H(pred | truth) = -sum_j (n_j / 36) log2(n_j / 36); H(truth | pred) = 0 because every
    # predicted segment lies inside the single truth object.
    expected_split = -2 * (16 / 36) * math.log2(16 / 36) - (4 / 36) * math.log2(4 / 36)
    assert scores["vi_split"] == pytest.approx(expected_split, rel=1e-12)
    assert scores["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    # Pairs (ordered, n^2 - n): together in both 2 (16^2 - 16) + (4^2 - 4) = 492, in truth
    # 36^2 - 36 = 1260, in the prediction also 492: a pure split, precision 1.
    assert scores["rand_precision"] == pytest.approx(1.0)
    assert scores["rand_recall"] == pytest.approx(492 / 1260)
    assert scores["adapted_rand_error"] == pytest.approx(1 - 2 * 492 / (492 + 1260))


def test_known_split_into_two_classes_is_exactly_one_bit():
    truth = np.zeros((6, 10), np.int32)
    truth[1:5, 1:9] = 1  # one 4 x 8 object (32 px)
    predicted = truth.copy()
    predicted[1:5, 5:9] = 2  # right half another class: two objects of 16 px, no gap
    scores = segmentation_scores(predicted, truth, num_classes=3)
    # Each truth pixel's predicted object is one of two equally likely ones: H = log2 2.
    assert scores["vi_split"] == pytest.approx(1.0, rel=1e-12)
    assert scores["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert scores["rand_recall"] == pytest.approx(2 * (16**2 - 16) / (32**2 - 32))


def test_known_merge_across_an_ignored_truth_boundary_is_exactly_one_bit():
    truth = np.zeros((6, 11), np.int32)
    truth[1:5, 1:5] = 1
    truth[1:5, 6:10] = 1  # two 4 x 4 objects, split by the class-0 column 5
    predicted = np.zeros_like(truth)
    predicted[1:5, 1:10] = 1  # one object over both and the line between them
    scores = segmentation_scores(predicted, truth, num_classes=2)
    # The truth's line is boundary, so unscored: the 32 scored pixels fall 16 + 16 into one
    # predicted object, H(truth | pred) = log2 2 = 1 bit, and H(pred | truth) = 0.
    assert scores["vi_merge"] == pytest.approx(1.0, rel=1e-12)
    assert scores["vi_split"] == pytest.approx(0.0, abs=1e-12)
    # Pairs together in both 2 (16^2 - 16) = 480, in the prediction 32^2 - 32 = 992.
    assert scores["rand_precision"] == pytest.approx(480 / 992)
    assert scores["rand_recall"] == pytest.approx(1.0)
    assert scores["adapted_rand_error"] == pytest.approx(1 - 2 * 480 / (480 + 992))
    assert scores["pixel_error"] == pytest.approx(4 / 66)


@pytest.mark.parametrize("seed", range(4))
def test_object_scores_match_brute_force_pair_counting(seed):
    rng = np.random.default_rng(seed)
    # Blocky random labels, so objects span several pixels and some touch other classes.
    truth = np.kron(rng.integers(0, 3, (3, 4)), np.ones((2, 2), np.int64))[:6, :7]
    predicted = truth.copy()
    flips = rng.random(truth.shape) < 0.25
    predicted[flips] = rng.integers(0, 3, flips.sum())
    scores = segmentation_scores(predicted, truth, num_classes=3)
    expected = brute_force_object_scores(predicted, truth)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # skimage's own error, on the reference ids, agrees (its precision/recall are swapped).
    skimage_error, _, _ = adapted_rand_error(
        flood_fill_objects(truth), flood_fill_objects(predicted)
    )
    assert scores["adapted_rand_error"] == pytest.approx(skimage_error, rel=1e-9)


def test_truth_without_objects_scores_rand_and_vi_as_perfect():
    truth = np.zeros((4, 4), np.int32)
    predicted = np.eye(4, dtype=np.int32)
    scores = segmentation_scores(predicted, truth, num_classes=2)
    assert scores["pixel_error"] == pytest.approx(4 / 16)
    assert scores["adapted_rand_error"] == 0.0 and scores["vi_merge"] == 0.0
    assert scores["iou_1"] == 0.0  # class 1 predicted but absent: pixel scores still see it


def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"predicted shape \(4, 5\) and truth shape \(4, 4\)"):
        segmentation_scores(np.zeros((4, 5), int), np.zeros((4, 4), int), num_classes=2)


@pytest.mark.parametrize(
    ("predicted", "truth", "message"),
    [
        (np.full((3, 3), 2), np.zeros((3, 3), int), r"predicted holds class indices 2\.\.2"),
        (np.zeros((3, 3), int), np.full((3, 3), -2), r"truth holds class indices -2\.\.-2"),
        (np.full((3, 3), -1), np.zeros((3, 3), int), r"predicted holds class indices -1"),
        (np.zeros((3, 3)), np.zeros((3, 3), int), "integer class indices, got dtype float64"),
        (np.zeros(9, int), np.zeros(9, int), r"\(H, W\) images"),
    ],
)
def test_invalid_labels_raise_with_the_reason(predicted, truth, message):
    with pytest.raises(ValueError, match=message):
        segmentation_scores(predicted, truth, num_classes=2)


def test_threshold_sweep_and_best_threshold_find_the_separating_threshold():
    truth = np.zeros((6, 11), np.int32)
    truth[1:5, 1:5] = 1
    truth[1:5, 6:10] = 1
    probabilities = np.where(truth == 1, 0.9, 0.1)
    probabilities[1:5, 5] = 0.6  # the membrane between the cells is uncertain
    thresholds = [0.3, 0.5, 0.7, 0.95]
    sweep = threshold_sweep(probabilities, truth, thresholds)
    assert [entry["threshold"] for entry in sweep] == thresholds
    # Below 0.6 the line joins the cells (merge); at 0.95 nothing is an object (merge into
    # the predicted boundary segment); only 0.7 reproduces the truth.
    assert [entry["adapted_rand_error"] > 0.1 for entry in sweep] == [True, True, False, True]
    best = best_threshold(sweep)
    assert best["threshold"] == 0.7 and best["pixel_error"] == 0.0
    expected = segmentation_scores((probabilities >= 0.3).astype(int), truth, num_classes=2)
    assert {k: v for k, v in sweep[0].items() if k != "threshold"} == expected
    assert best_threshold(sweep, metric="iou_1")["threshold"] == 0.7  # higher is better
    with pytest.raises(ValueError, match=r"probabilities shape \(6, 10\) and truth shape"):
        threshold_sweep(probabilities[:, :10], truth, thresholds)


def test_isbi_pixel_error_is_one_minus_the_f_score_of_cell_pixels_pooled_over_images():
    """Counted by hand: the challenge's error is 1 - 2TP / (2TP + FP + FN) of the cell
    pixels, from counts summed over the images, not the fraction of pixels wrong."""
    truth = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    probabilities = np.array([[0.9, 0.6, 0.2, 0.7], [0.8, 0.4, 0.1, 0.3]])
    counts = pixel_counts(probabilities, truth, [0.5, 0.65, 0.0, 1.0])
    # At 0.5: found 0.9, 0.6, 0.7, 0.8; of them cells 0.9, 0.6, 0.8; cells 0.2, 0.4 missed.
    assert counts.tolist() == [[3, 1, 2], [2, 1, 3], [5, 3, 0], [0, 0, 5]]
    errors = isbi_pixel_errors(counts)
    assert errors == pytest.approx([1 - 6 / 9, 1 - 4 / 8, 1 - 10 / 13, 1.0])
    assert segmentation_scores((probabilities >= 0.5).astype(int), truth, 2)["pixel_error"] == (
        3 / 8
    )
    # A second image with no error: pooled, it weighs by its pixels; per-image means would not.
    perfect = pixel_counts(truth.astype(float), truth, [0.5])
    pooled = isbi_pixel_errors(counts[:1] + perfect)[0]
    assert pooled == pytest.approx(1 - (6 + 10) / (9 + 10))
    assert pooled != pytest.approx((errors[0] + 0.0) / 2)
    # Unlabelled truth pixels count for nothing; nothing to find and nothing found: no error.
    sparse = np.where([[True, True, False, False]] * 2, truth, IGNORED)
    assert pixel_counts(probabilities, sparse, [0.5]).tolist() == [[3, 0, 1]]
    nothing = pixel_counts(np.zeros((2, 2)), np.zeros((2, 2), int), [0.5])
    assert isbi_pixel_errors(nothing).tolist() == [0.0]
    with pytest.raises(ValueError, match="truth holds class indices"):
        pixel_counts(probabilities, truth * 2, [0.5])
    with pytest.raises(ValueError, match=r"probabilities shape \(2, 3\) and truth shape"):
        pixel_counts(probabilities[:, :3], truth, [0.5])


def test_strict_pixel_counts_find_what_fiji_finds():
    """Fiji's PixelError finds p > t, comparing float pixels with double thresholds: a
    probability equal to the threshold is not found, and p = 1.0 is above 0.9999999999999999
    (its last threshold), which float32 would round to 1.0."""
    truth = np.array([[1, 1, 1, 0]])
    probabilities = np.array([[0.5, 1.0, 0.0, 0.5]], np.float32)
    thresholds = [0.5, 0.9999999999999999, 0.0]
    assert pixel_counts(probabilities, truth, thresholds).tolist() == [
        [2, 1, 1],
        [1, 0, 2],
        [3, 1, 0],
    ]
    assert pixel_counts(probabilities, truth, thresholds, strict=True).tolist() == [
        [1, 0, 2],
        [1, 0, 2],
        [2, 1, 1],
    ]


def test_best_threshold_breaks_ties_towards_one_half_and_rejects_bad_input():
    sweep = [
        {"threshold": 0.2, "pixel_error": 0.1},
        {"threshold": 0.6, "pixel_error": 0.1},
        {"threshold": 0.45, "pixel_error": 0.1},
        {"threshold": 0.9, "pixel_error": 0.3},
    ]
    assert best_threshold(sweep, "pixel_error")["threshold"] == 0.45
    with pytest.raises(ValueError, match="non-empty"):
        best_threshold([])
    with pytest.raises(ValueError, match="'vi_split'"):
        best_threshold(sweep, "vi_split")


def test_mean_scores_averages_the_common_keys():
    means = mean_scores([{"a": 1.0, "b": 2.0, "c": 5.0}, {"b": 4.0, "a": 2.0}])
    assert means == {"a": 1.5, "b": 3.0}
    assert all(type(value) is float for value in means.values())
    with pytest.raises(ValueError, match="at least one"):
        mean_scores([])


@pytest.mark.slow
def test_isbi_truth_against_dilated_membrane_and_all_cells(isbi):
    mask = np.asarray(Image.open(isbi / "train" / "masks" / "00.png"))
    truth = (mask == 255).astype(np.int32)  # 255 = cell interior = class 1, 0 = membrane
    membrane = truth == 0
    thicker = ndimage.binary_dilation(membrane)  # membrane grown by 1 px (4-neighbourhood)
    predicted = (~thicker).astype(np.int32)
    scores = segmentation_scores(predicted, truth, num_classes=2)
    assert scores["pixel_error"] == pytest.approx((thicker & ~membrane).mean())
    assert 0 < scores["pixel_error"] < 0.1
    assert 0 < scores["adapted_rand_error"] < 0.3
    assert 0 < scores["vi_split"] < 1 and 0 < scores["vi_merge"] < 1
    assert scores["iou_1"] > 0.85

    all_cells = segmentation_scores(np.ones_like(truth), truth, num_classes=2)
    assert all_cells["pixel_error"] == pytest.approx(membrane.mean())
    assert all_cells["adapted_rand_error"] > 0.5
    assert all_cells["rand_recall"] == pytest.approx(1.0)  # one object never splits a cell


def test_unlabelled_truth_pixels_change_no_score():
    """Whatever is predicted where the truth carries no label, every score is the same,
    and equals scoring the labelled part alone."""
    rng = np.random.default_rng(4)
    truth = cell_grid(40, 7)
    predicted = np.where(rng.random(truth.shape) < 0.1, 1 - truth, truth)
    sparse = truth.copy()
    sparse[:, 20:] = IGNORED
    first = segmentation_scores(predicted, sparse, 2)
    for seed in range(3):
        other = predicted.copy()
        other[:, 20:] = np.random.default_rng(seed).integers(0, 2, (40, 20))
        assert segmentation_scores(other, sparse, 2) == first
    left = segmentation_scores(predicted[:, :20], truth[:, :20], 2)
    for key in ("pixel_error", "iou_0", "iou_1", "dice_1", "adapted_rand_error", "vi_merge"):
        assert first[key] == pytest.approx(left[key]), key
    assert first["pixel_error"] == np.mean(predicted[:, :20] != truth[:, :20])
    sweeps = [
        threshold_sweep(np.where(sparse < 0, value, predicted * 0.8), sparse, [0.3, 0.7])
        for value in (0.0, 1.0)
    ]
    assert sweeps[0] == sweeps[1]


def test_object_counts_split_and_merge_errors():
    """Truth: three cells in a row. Prediction: the first cut in two, the other two
    joined across their membrane: one split error and one merge error."""
    truth = np.zeros((10, 32), np.int32)
    truth[1:9, 1:10], truth[1:9, 11:20], truth[1:9, 21:30] = 1, 1, 1
    predicted = truth.copy()
    predicted[:, 5] = 0  # a predicted boundary through the first cell
    predicted[1:9, 20] = 1  # the membrane between cells 2 and 3 missed
    scores = segmentation_scores(predicted, truth, 2)
    assert (scores["objects"], scores["truth_objects"]) == (3, 3)
    assert (scores["split_errors"], scores["merge_errors"]) == (1, 1)
    perfect = segmentation_scores(truth, truth, 2)
    assert (perfect["split_errors"], perfect["merge_errors"]) == (0, 0)


def test_given_objects_are_scored_instead_of_components():
    truth = np.zeros((10, 20), np.int32)
    truth[1:9, 1:9], truth[1:9, 11:19] = 1, 1
    merged = truth.copy()
    merged[1:9, 9:11] = 1  # the classes say one object...
    objects = np.where(merged > 0, 1, 0) + (np.arange(20) >= 10)[None, :] * (merged > 0)
    assert segmentation_scores(merged, truth, 2)["merge_errors"] == 1
    scores = segmentation_scores(merged, truth, 2, objects)  # ...the objects say two
    assert scores["merge_errors"] == 0 and scores["adapted_rand_error"] == 0.0
    with pytest.raises(ValueError, match="predicted_objects shape"):
        segmentation_scores(merged, truth, 2, objects[:, :5])

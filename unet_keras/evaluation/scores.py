"""Scores predicted segmentations against ground truth with the ISBI 2012 metrics.

Labels are int class-index arrays (H, W): class k is the k-th of a `MaskConfig`'s
`class_values` (see `unet_keras.io.masks.mask_to_labels`). Class 0 is the boundary
(membrane, for ISBI) and the other classes are objects. Besides the pixel-wise scores
(pixel error, per-class IoU and Dice) this reports the object-level scores the ISBI 2012
challenge ranked by, adapted Rand error and variation of information, on the objects
(`unet_keras.inference.instances`: connected components unless told otherwise), and
object counts with split and merge errors. Truth pixels marked `IGNORED` (-1: unlabelled
in a sparse annotation) are scored by nothing.

Pure numpy and scikit-image: no TensorFlow, so scoring is cheap to import and run anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from skimage.measure import label as connected_regions
from skimage.metrics import contingency_table, variation_of_information

from unet_keras.inference.instances import instance_labels
from unet_keras.io.masks import IGNORED

# The thresholds a sweep scores by default: 0.10, 0.15, ..., 0.90.
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))

# Scores where larger is better; `best_threshold` maximises these and minimises the rest.
_HIGHER_IS_BETTER_PREFIXES = ("iou_", "dice_", "rand_precision", "rand_recall", "v_rand", "v_info")


def segmentation_scores(
    predicted: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    predicted_objects: np.ndarray | None = None,
) -> dict[str, float]:
    """Scores one predicted label image against its ground truth; returns plain floats.

    Keys:

    - `pixel_error`: fraction of pixels whose class differs.
    - `iou_k`, `dice_k` for each class k: intersection over union and Dice of the class's
      pixels; 1.0 when class k is absent from both images (nothing to get wrong).
    - `adapted_rand_error`, `rand_precision`, `rand_recall`: the adapted Rand scores of
      SNEMI3D / ISBI 2012 (Arganda-Carreras et al. 2015), error = 1 - F-score of precision
      and recall. Pairs of scored pixels are counted: `rand_precision` is the fraction of
      pairs in one predicted object that share a truth object (drops on false merges),
      `rand_recall` the fraction of pairs in one truth object that share a predicted object
      (drops on false splits).
    - `vi_split`, `vi_merge`: the two conditional entropies of the variation of information,
      H(predicted | truth) (over-segmentation, false splits) and H(truth | predicted)
      (under-segmentation, false merges), in bits (log base 2, as
      `skimage.metrics.variation_of_information` computes them).

    - `objects`, `truth_objects`: how many objects each holds; `split_errors`: predicted
      objects beyond the first whose pixels lie mostly in one truth object (the truth
      object was cut in pieces); `merge_errors`: truth objects beyond the first that lie
      mostly in one predicted object (they were joined).

    Rand, VI and the counts score objects, not classes: `predicted_objects` (ids, 0 for
    boundary; by default the connected components, 4-connectivity, of every class except
    class 0, numbered apart) against the connected components of the truth. As in the
    ISBI 2012 challenge, pixels that are boundary (class 0) in the truth are not scored,
    so the exact boundary width does not matter there; predicted boundary pixels inside a
    truth object are scored, all together as one more predicted segment. If the truth holds
    no object pixel at all, nothing is scored and these scores are perfect (errors 0,
    precision and recall 1); ratios with no pairs to count are 1 likewise. Truth pixels
    `IGNORED` are left out of every score, and objects are cut where they begin: what is
    predicted there changes nothing.
    """
    predicted, truth = _checked_pair(predicted, truth, num_classes)
    if predicted_objects is None:
        predicted_objects = instance_labels(predicted)
    elif np.shape(predicted_objects) != predicted.shape:
        raise ValueError(
            f"predicted_objects shape {np.shape(predicted_objects)} differs from the "
            f"predicted classes' {predicted.shape}"
        )
    return _scores(predicted, truth, instance_labels(truth), num_classes, predicted_objects)


def threshold_sweep(
    probabilities: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """Scores a binary probability map thresholded at each of `thresholds`, in that order.

    `probabilities` (H, W) is the probability of class 1 (objects, e.g. ISBI cell interiors);
    pixels with p >= t become class 1 and the rest class 0. Each entry holds the
    `segmentation_scores` (num_classes=2) plus `threshold`.
    """
    probabilities, truth = checked_probabilities(probabilities, truth)
    truth_objects = instance_labels(truth)  # the same for every threshold
    sweep = []
    for threshold in thresholds:
        predicted = (probabilities >= threshold).astype(np.int32)
        scores = {"threshold": float(threshold)}
        scores.update(_scores(predicted, truth, truth_objects, 2))
        sweep.append(scores)
    return sweep


def pixel_counts(
    probabilities: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float],
    *,
    strict: bool = False,
) -> np.ndarray:
    """Object pixels found, falsely found and missed at each threshold, for `isbi_pixel_errors`.

    Returns int64 counts (len(thresholds), 3): true positives, false positives and false
    negatives of class 1 (objects; p >= t predicts class 1, or p > t with `strict`, the
    challenge's rule) over the labelled truth pixels. Sum them over the images of a stack
    before `isbi_pixel_errors`, as the challenge does.
    """
    probabilities, truth = checked_probabilities(probabilities, truth)
    labelled = truth != IGNORED
    scored, is_object = probabilities[labelled], truth[labelled] == 1
    if strict:
        # Fiji compares each float pixel with a double threshold: in float64, so that
        # 0.9999999999999999 (its last threshold) does not round to 1.0 in float32.
        scored = scored.astype(np.float64)
    counts = np.empty((len(thresholds), 3), np.int64)
    for row, threshold in enumerate(thresholds):
        found = scored > threshold if strict else scored >= threshold
        hits = int(np.count_nonzero(found & is_object))
        counts[row] = hits, int(np.count_nonzero(found)) - hits, int(is_object.sum()) - hits
    return counts


def isbi_pixel_errors(counts: np.ndarray) -> np.ndarray:
    """The ISBI 2012 challenge's pixel error at each threshold: 1 - F-score of object pixels.

    `counts` are `pixel_counts` rows, summed over a stack's images. The challenge ranked by
    the lowest of these over its thresholds, "1 - the maximal F-score of pixel similarity"
    (Fiji's trainableSegmentation `PixelError.getPixelErrorMaximalFScore`, the positive
    class being the truth's non-zero pixels: cells; Fiji finds p > t, `pixel_counts` with
    `strict`, where by default we find p >= t, which differs only for probabilities equal to
    a threshold; `challenge.ChallengeScores` counts as Fiji does). It is not `pixel_error`,
    the fraction of pixels misclassified: on ISBI (22 % membrane) a model with 0.085 of its
    pixels wrong scores about 0.053 here.
    """
    hits, false_found, missed = np.asarray(counts, np.float64).T
    found_or_true = 2 * hits + false_found + missed
    f_scores = np.divide(2 * hits, found_or_true, out=np.ones_like(hits), where=found_or_true > 0)
    return 1.0 - f_scores


def best_threshold(
    sweep: Sequence[dict[str, float]], metric: str = "adapted_rand_error"
) -> dict[str, float]:
    """Returns the sweep entry that scores best on `metric`; ties go to the threshold nearest 0.5.

    Best is the lowest value for errors (`pixel_error`, `adapted_rand_error`, `vi_split`,
    `vi_merge`) and the highest for `iou_k`, `dice_k`, `rand_precision` and `rand_recall`.
    NaN values rank last.
    """
    if not sweep:
        raise ValueError("best_threshold needs a non-empty sweep (see threshold_sweep)")
    for entry in sweep:
        if metric not in entry or "threshold" not in entry:
            raise ValueError(
                f"every sweep entry needs 'threshold' and {metric!r}; got keys {sorted(entry)}"
            )
    sign = -1.0 if metric.startswith(_HIGHER_IS_BETTER_PREFIXES) else 1.0

    def rank(entry: dict[str, float]) -> tuple[bool, float, float]:
        value = float(entry[metric])
        return math.isnan(value), sign * value, abs(float(entry["threshold"]) - 0.5)

    return min(sweep, key=rank)


def mean_scores(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Averages per-image scores key by key, over the keys every image has."""
    if not scores:
        raise ValueError("mean_scores needs at least one set of scores")
    common = set(scores[0]).intersection(*scores[1:])
    # Keep the first entry's key order, so reports list the scores the same way each time.
    return {
        key: float(np.mean([float(entry[key]) for entry in scores]))
        for key in scores[0]
        if key in common
    }


def _checked_pair(
    predicted: np.ndarray, truth: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validates two label images for scoring and returns them as int64 arrays."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(
            f"predicted shape {predicted.shape} and truth shape {truth.shape} differ; "
            "score a prediction against the truth of the same image"
        )
    if truth.ndim != 2:
        raise ValueError(f"labels must be (H, W) images, got shape {truth.shape}")
    checked = []
    for name, labels in (("predicted", predicted), ("truth", truth)):
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise ValueError(
                f"{name} must hold integer class indices, got dtype {labels.dtype}; "
                "threshold or argmax probabilities first"
            )
        # Only the truth may leave pixels unlabelled.
        lowest = IGNORED if name == "truth" else 0
        if labels.size and (labels.min() < lowest or labels.max() >= num_classes):
            raise ValueError(
                f"{name} holds class indices {labels.min()}..{labels.max()}, outside "
                f"{lowest}..{num_classes - 1} for num_classes={num_classes}"
            )
        checked.append(labels.astype(np.int64, copy=False))
    return checked[0], checked[1]


def checked_probabilities(
    probabilities: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validates a binary probability map and its class-index truth; returns them as arrays."""
    probabilities = np.asarray(probabilities)
    if not (
        np.issubdtype(probabilities.dtype, np.floating)
        or np.issubdtype(probabilities.dtype, np.integer)
    ):
        raise ValueError(f"probabilities must be real numbers, got dtype {probabilities.dtype}")
    if probabilities.shape != np.shape(truth):
        raise ValueError(
            f"probabilities shape {probabilities.shape} and truth shape {np.shape(truth)} differ"
        )
    # A stand-in prediction validates the truth; its errors then name only the truth.
    _, truth = _checked_pair(np.zeros(probabilities.shape, np.int32), truth, 2)
    return probabilities, truth


def _scores(
    predicted: np.ndarray,
    truth: np.ndarray,
    truth_objects: np.ndarray,
    num_classes: int,
    predicted_objects: np.ndarray | None = None,
) -> dict[str, float]:
    """`segmentation_scores` on validated labels, with the truth's objects precomputed."""
    labelled = truth != IGNORED
    scored = int(labelled.sum())
    wrong = int(((predicted != truth) & labelled).sum())
    scores = {"pixel_error": wrong / scored if scored else 0.0}
    # confusion[t, p]: labelled pixels of truth class t predicted as class p.
    confusion = np.bincount(
        (truth * num_classes + predicted)[labelled], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    for k in range(num_classes):
        hits = int(confusion[k, k])
        misses = int(confusion[k, :].sum() + confusion[:, k].sum()) - 2 * hits
        scores[f"iou_{k}"] = _ratio(hits, hits + misses)
        scores[f"dice_{k}"] = _ratio(2 * hits, 2 * hits + misses)
    # Objects are cut where the truth stops: what is predicted on unlabelled pixels can
    # neither join nor split objects of the labelled ones, so it changes no score.
    if predicted_objects is None:
        predicted_objects = instance_labels(np.where(labelled, predicted, 0))
    elif not labelled.all():
        predicted_objects = connected_regions(
            np.where(labelled, predicted_objects, 0), connectivity=1
        )
    scores.update(_object_scores(predicted_objects, truth_objects))
    scores.update(_object_counts(predicted_objects, truth_objects))
    return scores


def _object_counts(predicted_objects: np.ndarray, truth_objects: np.ndarray) -> dict[str, float]:
    """Object counts, and split and merge errors by where each object lies mostly."""
    predicted_ids, predicted_dense = np.unique(predicted_objects, return_inverse=True)
    truth_ids, truth_dense = np.unique(truth_objects, return_inverse=True)
    # overlap[i, j]: pixels of truth id i in predicted id j (id 0 included: boundary).
    pairs = truth_dense.ravel() * predicted_ids.size + predicted_dense.ravel()
    overlap = np.bincount(pairs, minlength=truth_ids.size * predicted_ids.size).reshape(
        truth_ids.size, predicted_ids.size
    )
    predicted_real, truth_real = predicted_ids != 0, truth_ids != 0
    # Each predicted object's home: the truth id holding most of its pixels; and back.
    home_of_predicted = np.argmax(overlap, axis=0)[predicted_real]
    home_of_truth = np.argmax(overlap, axis=1)[truth_real]
    splits = np.bincount(home_of_predicted, minlength=truth_ids.size)[truth_real]
    merges = np.bincount(home_of_truth, minlength=predicted_ids.size)[predicted_real]
    return {
        "objects": float(predicted_real.sum()),
        "truth_objects": float(truth_real.sum()),
        "split_errors": float(np.maximum(splits - 1, 0).sum()),
        "merge_errors": float(np.maximum(merges - 1, 0).sum()),
    }


def _object_scores(predicted_objects: np.ndarray, truth_objects: np.ndarray) -> dict[str, float]:
    """Adapted Rand and VI scores of two object-id images, truth id 0 not scored."""
    # table[i, j]: scored pixels in truth object i and predicted segment j.
    table = contingency_table(
        truth_objects, predicted_objects, ignore_labels=(0,), sparse_type="array"
    )
    scored = float(table.sum())
    if scored == 0:
        return {
            "adapted_rand_error": 0.0,
            "rand_precision": 1.0,
            "rand_recall": 1.0,
            "vi_split": 0.0,
            "vi_merge": 0.0,
        }
    # Counts of ordered pixel pairs (n^2 - n per group); the factor 2 cancels in the ratios.
    counts = table.data.astype(np.float64)
    truth_sizes = np.asarray(table.sum(axis=1), np.float64).ravel()
    predicted_sizes = np.asarray(table.sum(axis=0), np.float64).ravel()
    both = float(counts @ counts - scored)
    in_truth = float(truth_sizes @ truth_sizes - scored)
    in_predicted = float(predicted_sizes @ predicted_sizes - scored)
    # Not skimage's adapted_rand_error precision and recall: it returns them swapped
    # (scikit-image issue #6485, open in 0.26); its error, symmetric in them, agrees.
    precision = _ratio(both, in_predicted)
    recall = _ratio(both, in_truth)
    f_score = _ratio(2 * both, in_predicted + in_truth)
    # skimage's order with truth as image0: [H(predicted | truth), H(truth | predicted)].
    # The images are passed only for skimage's shape check, which fails on a bare table.
    vi_split, vi_merge = variation_of_information(
        truth_objects, predicted_objects, table=table / scored
    )
    return {
        "adapted_rand_error": 1.0 - f_score,
        "rand_precision": precision,
        "rand_recall": recall,
        # max(0, .): rounding can leave -1e-17 for a perfect match.
        "vi_split": max(0.0, float(vi_split)),
        "vi_merge": max(0.0, float(vi_merge)),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator as a float, 1.0 when there is nothing to count."""
    return float(numerator) / float(denominator) if denominator else 1.0

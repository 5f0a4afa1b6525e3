"""The ISBI 2012 challenge's ranking scores: V^Rand and V^Info after border thinning.

The challenge (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Front. Neuroanat. 9:142) ranked submissions by
the foreground-restricted Rand score and information theoretic score after border
thinning, as its evaluation script (imagej.net, "Segmentation evaluation after border
thinning - Script", version of 12 January 2016) computes them with Fiji's Trainable Weka
Segmentation: `RandError.getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)` and
`VariationOfInformation.getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)`, package
`trainableSegmentation.metrics` of github.com/fiji/Trainable_Segmentation. Ported point
by point (the Java names are that repository's):

1. Positive class. The truth is binarised as `label > t`: ISBI labels are 255 on cell
   interiors and 0 on membranes, so cells are foreground; here the truth is a class-index
   image whose class 1 (cells) is foreground. The proposal is binarised as `p > t` with the
   white, object side above the threshold, so `p` is the probability of a cell interior,
   not of membrane: here the probability of class 1, as `scores.threshold_sweep` takes it.
   Pixels are compared in double precision (`getPixelValue` promoted to `double`).
2. Thresholds. The Java loop `for (th = 0.0; th <= 1.0; th += 0.1)` accumulates rounding,
   so it scores 11 thresholds, 0.30000000000000004 and 0.9999999999999999 among them:
   at its last threshold, p = 1.0 (a saturated sigmoid) is still a cell.
   `CHALLENGE_THRESHOLDS` holds these doubles; reports name them rounded (0.3, 1.0).
3. Truth objects. `Utils.connectedComponents(binaryLabel, 4)`: the 4-connected components
   of the truth's cells; membrane is label 0.
4. Border thinning (`getForegroundRestrictedRandAfterThinningStatsN2`,
   `VariationOfInformation.foregroundRestrictedScoreAfterThinningN2`). The thresholded
   proposal is inverted (cells 0, borders 255) and flooded by
   `utils.WatershedTransform2D(binaryProposal, 4).apply()`, Vincent and Soille's flooding
   with 4-connectivity: every 4-connected region of cell pixels is a basin, and the border
   pixels are flooded breadth first from the basins, in the order of Java's scan (x outer,
   y inner) and looking at neighbours left, up, right, down. A border pixel takes the label
   of the labelled neighbours it sees when it is reached; it becomes a line pixel (label 0)
   if it sees two labels, or only line pixels. So a border becomes a one-pixel line where
   the floods of two cells meet and its other pixels join the nearest cell (4-connected
   distance through the border); of an even-width border's two middle pixels, the left or
   upper one joins its cell and the other is the line. `thin_borders` ports this flooding
   exactly. A proposal without any cell pixel is one object (the flooding's only basin is
   the whole image at the top level); one without border pixels is its cell regions.
5. Excluded pixels (foreground restriction, `getForegroundRestrictedRandIndexStatsN2` and
   `foregroundRestrictedFscore` on the label images). Only the truth's cell pixels are
   scored, n of them; truth membrane pixels are not, whatever the proposal holds there.
   Proposal line pixels inside truth cells are scored, each as a segment of its own (the
   Java's `p_i0` terms, `sum(p_i0) / n`).
6. V^Rand: an F-score of pixel pairs with N^2 normalisation (ordered pairs, each pixel
   paired with itself too). With c_ij the pixels of truth object i in proposal object j,
   a_i and b_j the sums: pairs together in both, tp = sum c_ij^2 + line pixels; together in
   the proposal, sum b_j^2 + line pixels; together in the truth, sum a_i^2. Precision is
   tp over the proposal's pairs (1 with no false positive pair; it drops on merges), recall
   tp over the truth's (it drops on splits), as `ClassificationStatistics` computes them;
   V^Rand = 2PR / (P + R), 0 when P + R = 0.
7. V^Info (`foregroundRestrictedFscore`): entropies in nats of p = c / n, line pixels being
   segments of probability 1/n: H(T), H(S) and H(T, S); I = H(T) + H(S) - H(T, S).
   Precision I / H(T), recall I / H(S), V^Info = their F-score, 2I / (H(T) + H(S)). With a
   single truth cell, H(T) = 0 and the Java sets precision 0 and recall 1; with a single
   proposal segment, H(S) = 0, precision 1 and recall 0: either way V^Info = 0. Where
   I = 0 with both entropies positive the Java divides 0 by 0 (NaN); we return 0.
8. Pooling. Each section (2D image) is scored on its own; a stack's score at a threshold
   is the mean of its sections' (`perSliceAverage = true` for V^Rand, the script's flag;
   V^Info always averages per slice). A section whose truth holds no cell scores 0 (the
   Java's counts are 0/0, which leaves its F-score at 0).
9. Best threshold. Each metric takes its own best threshold: the highest score, the first
   one in ascending order on ties (the Java's strict `>`). The pixel error, 1 - the maximal
   F-score of cell pixels pooled over the stack (`PixelError.getPixelErrorMaximalFScore`),
   is `scores.pixel_counts(strict=True)` and `scores.isbi_pixel_errors`, taken at its own
   lowest.

Beyond the reference: truth pixels `IGNORED` (unlabelled) are excluded like truth membrane,
and `ChallengeScores` also scores the model's own threshold t by the same rule, p > t
(`predict` takes p >= t: they differ only for probabilities equal to t).

NumPy and scikit-image only: no TensorFlow.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.measure import label as connected_regions

from unet_keras.evaluation.scores import checked_probabilities, isbi_pixel_errors, pixel_counts


def _reference_thresholds() -> tuple[float, ...]:
    """The thresholds as the reference's loop reaches them: 0.0, then += 0.1 while <= 1.0."""
    thresholds, threshold = [], 0.0
    while threshold <= 1.0:
        thresholds.append(threshold)
        threshold += 0.1
    return tuple(thresholds)


CHALLENGE_THRESHOLDS = _reference_thresholds()
# The scores in `section_sweep`'s columns, in order.
METRICS = ("v_rand", "v_info")

# The flooding's pixel states, beside basin labels (> 0). The line value 0 is also the
# label lines keep in the result, as the reference's WSHED.
_LINE, _MASK, _QUEUED, _OUTSIDE = 0, -2, -3, -4


def thin_borders(cells: np.ndarray) -> np.ndarray:
    """The proposal's objects after the reference's border thinning; 0 marks the lines.

    `cells` (H, W) is the thresholded proposal, True on cells. Returns int32 labels: one
    per 4-connected cell region, grown over the border pixels nearest to it, with 0 on
    the one-pixel lines left where two regions meet (point 4 of the module's notes).
    """
    cells = np.asarray(cells, bool)
    if cells.ndim != 2:
        raise ValueError(f"thin_borders needs an (H, W) image, got shape {cells.shape}")
    basins = connected_regions(cells, connectivity=1).astype(np.int32)
    if basins.size == 0 or cells.all():
        return basins
    if not cells.any():
        return np.ones(cells.shape, np.int32)
    # Transposed, row-major order is the Java's scan order (x outer, y inner); a frame of
    # _OUTSIDE spares bounds checks. Neighbours left, up, right, down, as Neighborhood2DC4.
    grid = np.pad(basins.T.astype(np.int64), 1, constant_values=_OUTSIDE)
    grid[1:-1, 1:-1][~cells.T] = _MASK
    stride = grid.shape[1]
    offsets = (-stride, -1, stride, 1)
    flat = grid.ravel()
    next_to_basin = np.zeros(flat.shape, bool)
    for offset in offsets:  # np.roll wraps around, but only frame pixels get there
        next_to_basin |= np.roll(flat, -offset) > 0
    start = np.flatnonzero((flat == _MASK) & next_to_basin)
    flat[start] = _QUEUED
    labels = _flood(flat.tolist(), deque(start.tolist()), offsets)
    return np.array(labels, np.int32).reshape(grid.shape)[1:-1, 1:-1].T.copy()


def _flood(labels: list[int], queue: deque[int], offsets: tuple[int, ...]) -> list[int]:
    """Floods the border pixels breadth first from the basins, as WatershedTransform2D does
    at its top level; `labels` is the flat framed image, `queue` its first border pixels."""
    # A plain loop over Python ints: the result depends on the queue's order, pixel by
    # pixel, which no array operation reproduces; it takes ~0.1 s for a 512 x 512 section.
    left, up, right, down = offsets
    while queue:
        pixel = queue.popleft()
        state, tentative = _QUEUED, False
        for neighbour in (pixel + left, pixel + up, pixel + right, pixel + down):
            label = labels[neighbour]
            if label > 0:
                if state == _QUEUED or (state == _LINE and tentative):
                    state = label
                elif state > 0 and state != label:
                    state, tentative = _LINE, False
            elif label == _LINE:
                # Beside a line only: a line, unless a labelled neighbour follows.
                if state == _QUEUED:
                    state, tentative = _LINE, True
            elif label == _MASK:
                labels[neighbour] = _QUEUED
                queue.append(neighbour)
        labels[pixel] = state
    return labels


def foreground_restricted_scores(
    truth_objects: np.ndarray, proposal_objects: np.ndarray
) -> tuple[float, float]:
    """V^Rand and V^Info of one section's proposal objects (0: line) against the truth's.

    Truth pixels with object id 0 are not scored; proposal pixels with id 0 (the thinned
    lines) are scored, each one a segment of its own (points 5 to 7 of the module's notes).
    """
    truth_objects, proposal_objects = np.asarray(truth_objects), np.asarray(proposal_objects)
    if truth_objects.shape != proposal_objects.shape:
        raise ValueError(
            f"truth objects {truth_objects.shape} and proposal objects "
            f"{proposal_objects.shape} differ in shape"
        )
    scored = truth_objects > 0
    n = int(scored.sum())
    if n == 0:
        return 0.0, 0.0
    truth = np.unique(truth_objects[scored], return_inverse=True)[1].ravel().astype(np.int64)
    proposal = proposal_objects[scored].astype(np.int64)
    on_line = proposal == 0
    lines = int(on_line.sum())
    truth_sizes = np.bincount(truth)
    object_sizes = np.unique(proposal[~on_line], return_counts=True)[1]
    # Pixels of each (truth object, proposal object) pair, line pixels left out.
    pairs = truth[~on_line] * (int(proposal.max()) + 1) + proposal[~on_line]
    overlaps = np.unique(pairs, return_counts=True)[1]
    return (
        _rand_score(truth_sizes, object_sizes, overlaps, lines),
        _info_score(truth_sizes, object_sizes, overlaps, lines, n),
    )


def _rand_score(
    truth_sizes: np.ndarray, object_sizes: np.ndarray, overlaps: np.ndarray, lines: int
) -> float:
    """V^Rand from the sizes of truth objects, proposal objects and their overlaps."""
    # Integer pair counts (each pixel also paired with itself): exact, so a perfect
    # proposal has no false pair at all and scores exactly 1.
    together = int(overlaps @ overlaps) + lines
    in_proposal = int(object_sizes @ object_sizes) + lines
    in_truth = int(truth_sizes @ truth_sizes)
    precision = 1.0 if in_proposal == together else together / in_proposal
    recall = 1.0 if in_truth == together else together / in_truth
    return _f_score(precision, recall)


def _info_score(
    truth_sizes: np.ndarray, object_sizes: np.ndarray, overlaps: np.ndarray, lines: int, n: int
) -> float:
    """V^Info from the sizes of truth objects, proposal objects and their overlaps."""
    # Each line pixel is a segment of probability 1/n: it adds (1/n) ln n to an entropy.
    singles = lines / n * math.log(n)
    h_truth = _entropy(truth_sizes / n)
    h_proposal = _entropy(object_sizes / n) + singles
    if h_truth == 0 or h_proposal == 0:
        return 0.0
    mutual = h_truth + h_proposal - (_entropy(overlaps / n) + singles)
    return _f_score(mutual / h_truth, mutual / h_proposal)


def _entropy(probabilities: np.ndarray) -> float:
    """-sum p ln p over non-zero probabilities; exactly 0 for a single segment."""
    probabilities = probabilities[probabilities > 0]
    return float(-np.sum(probabilities * np.log(probabilities)))


def _f_score(precision: float, recall: float) -> float:
    """The harmonic mean of precision and recall; 0 when both are 0."""
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def section_sweep(
    probabilities: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] = CHALLENGE_THRESHOLDS,
) -> np.ndarray:
    """V^Rand and V^Info (columns) of one section at each threshold (rows), p > t a cell.

    `probabilities` (H, W) is the probability of class 1 (cells); `truth` a class-index
    image (class 1 cells, 0 membrane, `IGNORED` unlabelled, not scored).
    """
    probabilities, truth = checked_probabilities(probabilities, truth)
    truth_objects = connected_regions(truth == 1, connectivity=1)
    # The reference compares each float pixel with a double threshold (point 2).
    probabilities = probabilities.astype(np.float64)
    scores = np.empty((len(thresholds), len(METRICS)))
    for row, threshold in enumerate(thresholds):
        proposal_objects = thin_borders(probabilities > threshold)
        scores[row] = foreground_restricted_scores(truth_objects, proposal_objects)
    return scores


class ChallengeScores:
    """The challenge's scores of a stack, fed a section at a time: `add`, then `summary`.

    `threshold` (optional) is the model's own threshold, scored beside the challenge's.
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self._thresholds = CHALLENGE_THRESHOLDS + (() if threshold is None else (threshold,))
        # Per section, at each threshold: V^Rand and V^Info, and the pixel counts.
        self._scores: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []

    @property
    def sections(self) -> int:
        """How many sections have been added."""
        return len(self._scores)

    def add(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """Scores one more section: its cell probabilities (H, W) and class-index truth."""
        self._scores.append(section_sweep(probabilities, truth, self._thresholds))
        self._counts.append(pixel_counts(probabilities, truth, self._thresholds, strict=True))

    def summary(self) -> dict[str, Any]:
        """The stack's scores: best of each metric over the challenge's thresholds, and more.

        Keys: `v_rand`, `v_info` and `isbi_pixel_error`, each `{"value", "threshold"}` at
        its own best threshold (highest V, lowest error); `at_threshold` (with a model
        threshold) the three at that threshold; `sweep` the three at each threshold;
        `sections`. V^Rand and V^Info are means over the sections, the pixel error pooled.
        """
        if not self.sections:
            raise ValueError("ChallengeScores.summary needs at least one section (add)")
        means = np.mean(self._scores, axis=0)
        errors = isbi_pixel_errors(np.sum(self._counts, axis=0))
        rows = [
            {
                "threshold": round(float(threshold), 10),
                **{metric: float(value) for metric, value in zip(METRICS, row, strict=True)},
                "isbi_pixel_error": float(error),
            }
            for threshold, row, error in zip(self._thresholds, means, errors, strict=True)
        ]
        sweep = rows[: len(CHALLENGE_THRESHOLDS)]
        summary: dict[str, Any] = {metric: _best(sweep, metric) for metric in METRICS}
        summary["isbi_pixel_error"] = _best(sweep, "isbi_pixel_error", highest=False)
        if self.threshold is not None:
            summary["at_threshold"] = {**rows[-1], "threshold": self.threshold}
        summary["sweep"] = sweep
        summary["sections"] = self.sections
        return summary

    def section_scores(self) -> list[dict[str, float]]:
        """Each section's V^Rand, V^Info and pixel error at the stack's best thresholds.

        The stack's V^Rand and V^Info are the means of these; its pixel error pools the
        sections' pixels, so it is not their mean. Where a stack loses its score shows here.
        """
        summary = self.summary()
        thresholds = [entry["threshold"] for entry in summary["sweep"]]
        at = {
            key: thresholds.index(summary[key]["threshold"])
            for key in (*METRICS, "isbi_pixel_error")
        }
        return [
            {
                **{key: float(scores[at[key], column]) for column, key in enumerate(METRICS)},
                "isbi_pixel_error": float(isbi_pixel_errors(counts[at["isbi_pixel_error"]])),
            }
            for scores, counts in zip(self._scores, self._counts, strict=True)
        ]


def challenge_scores(
    probabilities: Sequence[np.ndarray] | np.ndarray,
    truths: Sequence[np.ndarray] | np.ndarray,
    threshold: float | None = None,
) -> dict[str, Any]:
    """`ChallengeScores.summary` of a stack: cell probabilities and class-index truths,
    (N, H, W) arrays or sequences of (H, W) sections, or one (H, W) section."""
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        probabilities, truths = [probabilities], [truths]
    if len(probabilities) != len(truths):
        raise ValueError(f"{len(probabilities)} probability maps but {len(truths)} truths")
    scorer = ChallengeScores(threshold)
    for section, truth in zip(probabilities, truths, strict=True):
        scorer.add(section, truth)
    return scorer.summary()


def _best(sweep: list[dict[str, float]], metric: str, highest: bool = True) -> dict[str, float]:
    """The best value of `metric` in `sweep` and its threshold; the first one on ties."""
    values = np.array([entry[metric] for entry in sweep])
    index = int(np.argmax(values) if highest else np.argmin(values))
    return {"value": float(values[index]), "threshold": sweep[index]["threshold"]}

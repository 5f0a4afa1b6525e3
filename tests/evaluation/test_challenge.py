"""unet_keras.evaluation.challenge: the ISBI 2012 challenge's V^Rand and V^Info."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unet_keras.evaluation.challenge import (
    CHALLENGE_THRESHOLDS,
    ChallengeScores,
    challenge_scores,
    foreground_restricted_scores,
    section_sweep,
    thin_borders,
)
from unet_keras.evaluation.scores import isbi_pixel_errors, pixel_counts
from unet_keras.io.masks import IGNORED


def cell_grid(size: int = 25, step: int = 6, width: int = 1) -> np.ndarray:
    """Class-index truth: class-0 membranes `width` pixels wide (odd, at most 5) centred
    every `step` pixels from 3 to 21, around class-1 cells, the last ones on the edges."""
    labels = np.ones((size, size), np.int32)
    for centre in range(3, size, step):
        band = slice(max(centre - width // 2, 0), centre + width // 2 + 1)
        labels[band, :] = 0
        labels[:, band] = 0
    return labels


def scores_at(probabilities: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> tuple:
    """V^Rand and V^Info of one section at one threshold."""
    v_rand, v_info = section_sweep(probabilities, truth, [threshold])[0]
    return v_rand, v_info


def reference_threshold(reported: float) -> float:
    """The reference's double that a report names rounded (0.3: 0.1 + 0.1 + 0.1)."""
    return min(CHALLENGE_THRESHOLDS, key=lambda threshold: abs(threshold - reported))


def same_partition(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two label images hold the same zeros and the same objects, ids aside."""
    pairs = set(zip(first.ravel().tolist(), second.ravel().tolist(), strict=True))
    one_to_one = len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    return one_to_one and np.array_equal(first == 0, second == 0)


def test_the_thresholds_are_the_reference_loops_doubles():
    # Fiji's `for (th = 0.0; th <= 1.0; th += 0.1)`: 11 thresholds, rounding included.
    assert len(CHALLENGE_THRESHOLDS) == 11
    assert CHALLENGE_THRESHOLDS[3] == 0.1 + 0.1 + 0.1 != 0.3
    assert CHALLENGE_THRESHOLDS[-1] == 0.9999999999999999
    # p > t: a saturated p = 1.0 is still a cell at the last threshold, p = 0 never is.
    truth = cell_grid()
    sweep = section_sweep(truth.astype(np.float32), truth)
    assert sweep.tolist() == [[1.0, 1.0]] * 11
    membrane_at_half = np.where(truth == 1, 1.0, 0.5)
    assert scores_at(membrane_at_half, truth, 0.5) == (1.0, 1.0)
    assert scores_at(membrane_at_half, truth, 0.4)[1] == 0.0  # all one cell


@pytest.mark.parametrize(
    ("truth_width", "proposal_width"), [(1, 1), (3, 1), (1, 3), (5, 1), (1, 5), (3, 5)]
)
def test_the_same_cells_score_one_whatever_the_membranes_width(truth_width, proposal_width):
    # Thin and thick membranes around the same cells: the truth's membrane is not scored
    # and the proposal's is thinned to a line inside the truth's, so both score exactly 1.
    truth = cell_grid(width=truth_width)
    proposal = cell_grid(width=proposal_width).astype(np.float32)
    assert scores_at(proposal, truth) == (1.0, 1.0)


def test_borders_thin_to_one_pixel_lines_as_the_reference_floods_them():
    cells = np.ones((4, 9), bool)
    cells[:, 3:6] = False  # a 3-pixel border: its middle column is the line
    assert thin_borders(cells).tolist() == [[1, 1, 1, 1, 0, 2, 2, 2, 2]] * 4
    cells[:, 5] = True  # 2 pixels wide: the first one scanned joins its cell
    assert thin_borders(cells).tolist() == [[1, 1, 1, 1, 0, 2, 2, 2, 2]] * 4
    assert thin_borders(cells.T).T.tolist() == [[1, 1, 1, 1, 0, 2, 2, 2, 2]] * 4
    # A border with one cell beside it joins the cell; no cell at all is one object.
    cells[:, 4:] = False
    assert thin_borders(cells).tolist() == [[1] * 9] * 4
    assert thin_borders(np.zeros((3, 3), bool)).tolist() == [[1] * 3] * 3


# Fiji's WatershedTransform2D(binaryProposal, 4).apply() on `JAVA_PROPOSAL / 10 > 0.5`
# (ImageJ stubbed for its input and output), with its dead-end lines: where a border
# pixel sees only line pixels when the flood reaches it, it becomes a line too.
JAVA_PROPOSAL = """
966857820328 904817148332 729445555987 763942818610 401594898645 243290019682
734068615298 159876074025 756863651063"""
JAVA_LABELS = """
 1  1  1  1  0  7  7  7  0 13 13 13 |  1  1  0  1  0  7  7  0 11  0  0  0
 1  0  4  0  7  7  0  8  0  8  8  8 |  1  1  0  6  0  0  8  8  8  8  8  8
 1  1  1  0  5  0  8  8  8  8  8  8 |  0  0  0  5  5  5  0  8  8  8  8  8
 2  2  0  5  5  5  5  0  8  8  8  8 |  0  0  5  5  5  5  0 10  0  0  0  8
 3  0  5  5  5  0  9  0 12 12 12  0"""


def test_thinning_matches_the_reference_on_a_random_proposal():
    digits = np.array([[int(d) for d in row] for row in JAVA_PROPOSAL.split()])
    java = np.array([row.split() for row in JAVA_LABELS.replace("|", "\n").split("\n")[1:]])
    assert same_partition(thin_borders(digits / 10 > 0.5), java.astype(int))


def test_thinned_objects_are_the_cells_grown_and_kept_apart_by_lines():
    rng = np.random.default_rng(0)
    for _ in range(30):
        cells = ndimage.gaussian_filter(rng.random((20, 24)), 1.0) > rng.uniform(0.45, 0.55)
        objects = thin_borders(cells)
        # Each 4-connected cell region is one object, of its own.
        assert same_partition(np.where(cells, objects, 0), ndimage.label(cells)[0])
        # Objects never touch: a line pixel lies between any two.
        for a, b in ((objects[1:], objects[:-1]), (objects[:, 1:], objects[:, :-1])):
            assert not np.any((a > 0) & (b > 0) & (a != b))
        # Each object is 4-connected: its region grown over nearby border pixels.
        for index in range(1, objects.max() + 1):
            assert ndimage.label(objects == index)[1] == 1


def split_and_merge_truth(cells: int) -> np.ndarray:
    """5 x (6 cells - 1) truth: `cells` cells of 5 x 5 pixels, 1-pixel membranes between."""
    truth = np.ones((5, 6 * cells - 1), np.int32)
    truth[:, 5::6] = 0
    return truth


def test_a_split_cell_scores_as_computed_by_hand():
    truth = split_and_merge_truth(2)  # cells A and B, 25 pixels each: n = 50
    proposal = truth.astype(np.float32)
    proposal[:, 2] = 0  # cuts A into A1 and A2, 10 pixels each, by a 5-pixel line
    v_rand, v_info = scores_at(proposal, truth)
    # Pairs (ordered, with themselves): in both together, A1 + A2 + B + the 5 line pixels
    # each alone: 100 + 100 + 625 + 5 = 830; in the proposal together, the same 830 (no
    # merge: precision 1); in the truth together, 625 + 625 = 1250 (recall 830 / 1250).
    assert v_rand == pytest.approx(2 * 830 / (830 + 1250))
    # Entropies (nats): H(T) = ln 2; H(S) = 2 (0.2 ln 5) + 0.5 ln 2 + 5 (ln 50) / 50;
    # the proposal refines the truth, so H(T, S) = H(S) and I = H(T).
    h_proposal = 0.4 * math.log(5) + 0.5 * math.log(2) + 0.1 * math.log(50)
    assert v_info == pytest.approx(2 * math.log(2) / (math.log(2) + h_proposal))


def test_merged_cells_score_as_computed_by_hand():
    truth = split_and_merge_truth(3)  # cells A, B and C, 25 pixels each: n = 75
    proposal = truth.astype(np.float32)
    proposal[:, 5] = 1  # no membrane between A and B: one 50-pixel object
    v_rand, v_info = scores_at(proposal, truth)
    # Pairs together in both: 3 x 625 = 1875; in the proposal: 2500 + 625 = 3125
    # (precision 0.6); in the truth: 1875 (recall 1). F = 2 x 0.6 / 1.6 = 0.75.
    assert v_rand == pytest.approx(0.75)
    # H(T) = ln 3; H(S) = ln 3 - (2/3) ln 2; the truth refines the proposal: I = H(S).
    h_proposal = math.log(3) - 2 / 3 * math.log(2)
    assert v_info == pytest.approx(2 * h_proposal / (math.log(3) + h_proposal))


def test_degenerate_sections_score_as_the_reference_does():
    truth = split_and_merge_truth(2)
    # One segment on either side: the reference's precision or recall of 0, V^Info 0.
    assert scores_at(np.ones(truth.shape), truth)[1] == 0.0
    one_cell = np.ones((4, 4), np.int32)
    assert scores_at(one_cell.astype(float), one_cell) == (1.0, 0.0)
    # No truth cell: nothing scored, and the reference's 0/0 leaves both at 0.
    assert scores_at(np.ones((4, 4)), np.zeros((4, 4), np.int32)) == (0.0, 0.0)


def test_unlabelled_truth_pixels_are_not_scored():
    truth = split_and_merge_truth(3)
    proposal = truth.astype(np.float32)
    proposal[:, 2] = 0
    truth[:, :5] = IGNORED  # the split cell
    assert scores_at(proposal, truth) == (1.0, 1.0)


def literal_scores(truth: np.ndarray, proposal: np.ndarray) -> tuple[float, float]:
    """V^Rand by counting pixel pairs one by one, V^Info by 2 I / (H(T) + H(S))."""
    # The truth's cell pixels only; a proposal line pixel (0) is a segment of its own.
    pixels = [
        (int(t), int(s) if s else ("line", index))
        for index, (t, s) in enumerate(zip(truth.ravel(), proposal.ravel(), strict=True))
        if t > 0
    ]
    if not pixels:
        return 0.0, 0.0
    hits = false_joins = false_cuts = 0
    for (t1, s1), (t2, s2) in itertools.product(pixels, repeat=2):  # ordered, self too
        hits += t1 == t2 and s1 == s2
        false_joins += t1 != t2 and s1 == s2
        false_cuts += t1 == t2 and s1 != s2
    precision = hits / (hits + false_joins)
    recall = hits / (hits + false_cuts)
    v_rand = 2 * precision * recall / (precision + recall)

    def entropy(counts: Counter) -> float:
        return -sum(c / len(pixels) * math.log(c / len(pixels)) for c in counts.values())

    h_truth = entropy(Counter(t for t, _ in pixels))
    h_proposal = entropy(Counter(s for _, s in pixels))
    mutual = h_truth + h_proposal - entropy(Counter(pixels))
    # The F-score of I / H(T) and I / H(S) is 2 I / (H(T) + H(S)).
    v_info = 0.0 if h_truth == 0 or h_proposal == 0 else 2 * mutual / (h_truth + h_proposal)
    return v_rand, v_info


def test_scores_match_counting_pixel_pairs_one_by_one():
    rng = np.random.default_rng(1)
    for _ in range(150):
        shape = tuple(rng.integers(1, 7, 2))
        truth = rng.integers(0, rng.integers(1, 5), shape)
        proposal = rng.integers(0, rng.integers(1, 6), shape)
        expected = literal_scores(truth, proposal)
        assert foreground_restricted_scores(truth, proposal) == pytest.approx(expected)


def test_a_stack_scores_the_mean_of_its_sections_and_the_best_thresholds():
    truth = split_and_merge_truth(2)
    split = truth.astype(np.float32)
    split[:, 2] = 0.7  # a membrane only above 0.7
    summary = challenge_scores([truth.astype(np.float32), split], [truth, truth], 0.75)
    perfect, cut = np.ones(2), section_sweep(split, truth, [0.9])[0]
    by_threshold = {entry["threshold"]: entry for entry in summary["sweep"]}
    assert list(by_threshold) == [round(0.1 * i, 1) for i in range(11)]
    assert [by_threshold[0.9][m] for m in ("v_rand", "v_info")] == pytest.approx(
        (perfect + cut) / 2
    )
    # The section split at 0.7 and above: the best is the first threshold scoring 1.
    assert summary["v_rand"] == summary["v_info"] == {"value": 1.0, "threshold": 0.0}
    assert summary["at_threshold"]["threshold"] == 0.75
    assert summary["at_threshold"]["v_rand"] == by_threshold[0.9]["v_rand"]
    # The pixel error pools the sections' pixels, counted as the challenge does: p > t,
    # so the cut's 5 pixels at p = 0.7 are missed at 0.7.
    counts = sum(pixel_counts(p, truth, [0.7], strict=True) for p in (truth, split))
    assert counts.tolist() == [[95, 0, 5]]
    assert by_threshold[0.7]["isbi_pixel_error"] == pytest.approx(isbi_pixel_errors(counts)[0])
    assert by_threshold[0.6]["isbi_pixel_error"] == 0.0
    assert summary["isbi_pixel_error"] == {"value": 0.0, "threshold": 0.0}
    assert summary["sections"] == 2


def test_each_section_is_scored_at_the_stacks_best_thresholds():
    truth = cell_grid()
    merged = truth.astype(np.float32)
    merged[3, 4:9] = 0.95  # a gap in one membrane, closed only at 1.0
    blurred = np.where(truth == 1, 0.8, 0.2).astype(np.float32)  # cells only below 0.8
    scorer = ChallengeScores()
    for probabilities in (truth.astype(np.float32), merged, blurred):
        scorer.add(probabilities, truth)
    summary, sections = scorer.summary(), scorer.section_scores()
    # The stack's best V^Rand needs the gap closed and the blur's cells open: no threshold
    # does both, so one section pays at the threshold chosen, and the stack is their mean.
    best = reference_threshold(summary["v_rand"]["threshold"])
    assert best < 0.8
    at_best = [scores_at(p, truth, best) for p in (truth, merged, blurred)]
    assert [section["v_rand"] for section in sections] == pytest.approx([v for v, _ in at_best])
    assert sections[1]["v_rand"] < 1.0 == sections[2]["v_rand"]
    assert np.mean([section["v_rand"] for section in sections]) == pytest.approx(
        summary["v_rand"]["value"]
    )
    assert np.mean([section["v_info"] for section in sections]) == pytest.approx(
        summary["v_info"]["value"]
    )
    # The pixel error pools the pixels: a section's own is at the stack's threshold.
    lowest = summary["isbi_pixel_error"]["threshold"]
    counts = pixel_counts(merged, truth, [reference_threshold(lowest)], strict=True)
    assert sections[1]["isbi_pixel_error"] == pytest.approx(isbi_pixel_errors(counts)[0])
    assert sections[1]["isbi_pixel_error"] > 0 == sections[0]["isbi_pixel_error"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="differ"):
        section_sweep(np.zeros((3, 3)), np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="differ in shape"):
        foreground_restricted_scores(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least one section"):
        ChallengeScores().summary()
    with pytest.raises(ValueError, match="2 probability maps but 1"):
        challenge_scores([np.zeros((3, 3))] * 2, [np.zeros((3, 3), np.int32)])


def test_evaluate_reports_the_challenges_scores(
    membrane_white_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.serving_fixtures import random_images
    from unet_keras.cli import main
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.io.writers import write_image

    pictures = random_images(2, seed=3)
    for name, picture in zip(("a", "b"), pictures, strict=True):
        write_image(tmp_path / "data" / "images" / f"{name}.png", picture)
        mask = np.where(picture[..., 0] > 100, 0, 255).astype(np.uint8)  # (255, 0) convention
        write_image(tmp_path / "data" / "masks" / f"{name}.png", mask)
    command = ["evaluate", "--model", str(membrane_white_model), "--data"]
    assert main([*command, str(tmp_path / "data"), "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    segmenter = Segmenter.from_path(membrane_white_model)
    probabilities = [segmenter.probabilities(picture)[..., 0] for picture in pictures]
    truths = [(picture[..., 0] > 100).astype(np.int32) for picture in pictures]
    expected = challenge_scores(probabilities, truths, segmenter.threshold)
    challenge = report["challenge"]
    for key in ("v_rand", "v_info", "isbi_pixel_error"):
        assert challenge[key]["threshold"] == expected[key]["threshold"]
        assert challenge[key]["value"] == pytest.approx(expected[key]["value"])
    assert challenge["at_threshold"] == pytest.approx(expected["at_threshold"])
    for entry, expected_entry in zip(challenge["sweep"], expected["sweep"], strict=True):
        assert entry == pytest.approx(expected_entry)
    # Each image's own, at the stack's best thresholds: the stack's are their means.
    best = reference_threshold(challenge["v_rand"]["threshold"])
    for image, p, truth in zip(report["images"], probabilities, truths, strict=True):
        assert image["challenge"]["v_rand"] == pytest.approx(scores_at(p, truth, best)[0])
    v_rand = [image["challenge"]["v_rand"] for image in report["images"]]
    assert np.mean(v_rand) == pytest.approx(challenge["v_rand"]["value"])
    printed = capsys.readouterr().out
    shown = json.loads(printed[: printed.rindex("}") + 1])["challenge"]
    assert "sweep" not in shown and shown["v_rand"] == pytest.approx(expected["v_rand"])

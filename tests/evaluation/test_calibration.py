"""unet_keras.evaluation.calibration: the threshold chosen on the validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unet_keras.evaluation.calibration import calibrate_threshold
from unet_keras.exports.savedmodel import ServingModule
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.sample import Sample
from unet_keras.record import MaskConfig
from unet_keras.saving import load_model, save_model


def _saved_with_spread_probabilities(
    tiny_unet, path: Path, seed: int, mask: MaskConfig, shift: float = 0.0
) -> Path:
    """The tiny U-Net saved at `path` with steeper output weights (shifted by `shift`),
    which spread its probabilities over (0, 1) so that nearby thresholds differ."""
    model, record = tiny_unet(seed=seed, mask=mask)
    output = model.get_layer("output")
    kernel, bias = output.get_weights()
    output.set_weights([kernel * 3, bias + shift])
    save_model(model, path, record)
    return path


def test_the_threshold_that_reproduces_the_masks_is_chosen_and_stored(
    tmp_path: Path, tiny_unet
) -> None:
    # The masks made at 0.45 below differ from those at 0.4 and 0.5.
    membrane_white = MaskConfig((255, 0))
    path = _saved_with_spread_probabilities(
        tiny_unet, tmp_path / "best.keras", 11, membrane_white, shift=-0.5
    )
    untouched = Segmenter.from_path(path)
    assert untouched.threshold == 0.5
    rng = np.random.default_rng(0)
    samples = []
    for index in range(2):
        image = rng.integers(0, 256, (48, 56, 1), dtype=np.uint8)
        # Masks that are exactly the model's own prediction at 0.45, in the (255, 0) convention.
        labels = (untouched.probabilities(image)[..., 0] >= 0.45).astype(np.int32)
        samples.append(Sample(f"v{index}", image, np.where(labels == 1, 0, 255)))
        probabilities = untouched.probabilities(image)
        assert np.any((probabilities >= 0.4) & (probabilities < 0.45))
        assert np.any((probabilities >= 0.45) & (probabilities < 0.5))

    calibration = calibrate_threshold(path, samples)
    assert calibration.value == 0.45
    assert calibration.images == ("v0", "v1")
    assert calibration.scores["pixel_error"] == 0
    assert calibration.scores["adapted_rand_error"] == 0
    assert calibration.scores_at_half["pixel_error"] > 0

    # Prediction and export default to it; the model itself is unchanged.
    calibrated = Segmenter.from_path(path)
    assert calibrated.threshold == 0.45
    np.testing.assert_array_equal(
        calibrated.mask(calibrated.labels(calibrated.probabilities(samples[0].image))),
        samples[0].mask,
    )
    model, stored = load_model(path)
    assert stored.threshold == calibration and stored.mask == membrane_white
    assert ServingModule(model, stored)._threshold == 0.45
    assert Segmenter.from_path(path, threshold=0.6).threshold == 0.6


def test_sparse_masks_choose_by_membrane_iou_over_labelled_pixels_only(
    tmp_path: Path, tiny_unet
) -> None:
    """With unlabelled pixels the threshold is the one of best membrane IoU counted on the
    labelled pixels (a brute-force reference here), whatever the unlabelled ones hold."""
    from unet_keras.evaluation.scores import SWEEP_THRESHOLDS

    mask_config = MaskConfig((0, 255), ignore_value=128)
    path = _saved_with_spread_probabilities(tiny_unet, tmp_path / "best.keras", 11, mask_config)
    segmenter = Segmenter.from_path(path)
    rng = np.random.default_rng(5)
    samples, maps, truths = [], [], []
    for index in range(2):
        image = rng.integers(0, 256, (48, 56, 1), dtype=np.uint8)
        mask = np.where(rng.random((48, 56)) < 0.7, 255, 0).astype(np.uint8)
        mask[:, 30:] = 128  # the right part carries no label
        samples.append(Sample(f"v{index}", image, mask))
        maps.append(segmenter.probabilities(image)[..., 0])
        truths.append(mask)

    def membrane_iou(threshold: float) -> float:
        ious = []
        for probabilities, mask in zip(maps, truths, strict=True):
            labelled = mask != 128
            predicted, truth = probabilities < threshold, mask == 0
            both = (predicted & truth & labelled).sum()
            ious.append(both / ((predicted | truth) & labelled).sum())
        return float(np.mean(ious))

    expected = max(SWEEP_THRESHOLDS, key=lambda t: (membrane_iou(t), -abs(t - 0.5)))
    calibration = calibrate_threshold(path, samples)
    assert calibration.chosen_by == "iou_0"
    assert calibration.value == expected
    assert calibration.scores["iou_0"] == pytest.approx(membrane_iou(expected))


def test_full_masks_choose_the_threshold_of_fewest_wrong_pixels(tmp_path: Path, tiny_unet) -> None:
    """By default, with every pixel labelled: the threshold of least pixel error (a
    brute-force reference over the same sweep), recorded as chosen by it; adapted Rand
    error when asked for."""
    from unet_keras.evaluation.scores import SWEEP_THRESHOLDS

    path = _saved_with_spread_probabilities(tiny_unet, tmp_path / "best.keras", 3, MaskConfig())
    segmenter = Segmenter.from_path(path)
    rng = np.random.default_rng(8)
    samples, maps = [], []
    for index in range(2):
        image = rng.integers(0, 256, (48, 56, 1), dtype=np.uint8)
        probabilities = segmenter.probabilities(image)[..., 0]
        # Truth near the model's answer at 0.6, with a tenth of the pixels flipped.
        cells = (probabilities >= 0.6) ^ (rng.random(probabilities.shape) < 0.1)
        samples.append(Sample(f"v{index}", image, np.where(cells, 255, 0).astype(np.uint8)))
        maps.append((probabilities, cells))

    def pixel_error(threshold: float) -> float:
        return float(np.mean([np.mean((p >= threshold) != cells) for p, cells in maps]))

    expected = min(SWEEP_THRESHOLDS, key=lambda t: (pixel_error(t), abs(t - 0.5)))
    assert expected != 0.5  # the test must tell the criterion from the default threshold
    calibration = calibrate_threshold(path, samples)
    assert calibration.chosen_by == "pixel_error"
    assert calibration.value == expected
    assert calibration.scores["pixel_error"] == pytest.approx(pixel_error(expected))
    assert load_model(path)[1].threshold == calibration

    by_objects = calibrate_threshold(path, samples, "adapted_rand_error")
    assert by_objects.chosen_by == "adapted_rand_error"
    assert by_objects.value != calibration.value  # here the two criteria disagree
    assert by_objects.scores["adapted_rand_error"] <= calibration.scores["adapted_rand_error"]
    assert by_objects.scores["pixel_error"] >= calibration.scores["pixel_error"]
    assert load_model(path)[1].threshold == by_objects


def test_v_rand_closes_a_gap_in_a_membrane_that_pixel_error_leaves_open(
    tmp_path: Path, tiny_unet, monkeypatch
) -> None:
    """Two cells with a membrane between them that the map leaves half open (p 0.75 in a
    gap of 8 pixels), and a faint patch of cell (p 0.6, 60 pixels): fewest wrong pixels
    wants the gap open (t <= 0.6), the challenge's V^Rand wants it closed (t > 0.75)."""
    from unet_keras.evaluation.challenge import section_sweep
    from unet_keras.evaluation.scores import SWEEP_THRESHOLDS

    path = _saved_with_spread_probabilities(tiny_unet, tmp_path / "best.keras", 3, MaskConfig())
    cells = np.ones((40, 40), bool)
    cells[:, 19:21] = False
    probabilities = np.where(cells, 0.95, 0.1)
    probabilities[10:14, 19:21] = 0.75
    probabilities[25:35, 28:34] = 0.6
    monkeypatch.setattr(Segmenter, "probabilities", lambda self, *_: probabilities[..., None])
    image = np.zeros((40, 40, 1), np.uint8)
    samples = [Sample("v0", image, np.where(cells, 255, 0).astype(np.uint8))]

    by_pixels = calibrate_threshold(path, samples)
    assert by_pixels.value <= 0.6
    by_v_rand = calibrate_threshold(path, samples, "v_rand")
    # Predict takes p >= t as a cell: at 0.75 the gap is still open.
    assert by_v_rand.chosen_by == "v_rand" and 0.75 < by_v_rand.value < 0.95
    assert not (probabilities >= by_v_rand.value)[10:14, 19:21].any()
    truth = cells.astype(np.int32)

    def v_rand(threshold: float) -> float:
        return section_sweep(probabilities, truth, [np.nextafter(threshold, 0)])[0, 0]

    assert by_v_rand.scores["v_rand"] == pytest.approx(v_rand(by_v_rand.value))
    assert by_v_rand.scores["v_rand"] > v_rand(by_pixels.value) + 0.1
    assert max(v_rand(t) for t in SWEEP_THRESHOLDS) == pytest.approx(by_v_rand.scores["v_rand"])
    assert load_model(path)[1].threshold == by_v_rand

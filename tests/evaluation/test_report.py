"""Scoring a model on labelled files: the report, its figures and the threshold sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.serving_fixtures import random_images as images
from unet_keras.cli import main
from unet_keras.evaluation.report import evaluate_path
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.writers import write_image


def test_evaluate_scores_writes_figures_and_sweeps(
    membrane_white_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pictures = images(2, seed=2)
    for name, picture in zip(("a", "b"), pictures, strict=True):
        write_image(tmp_path / "data" / "images" / f"{name}.png", picture)
        mask = np.where(picture[..., 0] > 100, 0, 255).astype(np.uint8)  # (255, 0) convention
        write_image(tmp_path / "data" / "masks" / f"{name}.png", mask)
    status = main(
        ["evaluate", "--model", str(membrane_white_model), "--data", str(tmp_path / "data"),
         "--output", str(tmp_path / "eval"), "--sweep"]
    )  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [image["name"] for image in report["images"]] == ["a.png", "b.png"]
    segmenter = Segmenter.from_path(membrane_white_model)
    predicted = segmenter.labels(segmenter.probabilities(pictures[0]))
    truth = (pictures[0][..., 0] > 100).astype(int)
    assert report["images"][0]["scores"]["pixel_error"] == pytest.approx(
        np.mean(predicted != truth)
    )
    assert len(report["sweep"]) == 17
    best = report["best_threshold"]
    assert best["adapted_rand_error"] == min(e["adapted_rand_error"] for e in report["sweep"])
    # The challenge's pixel error: the threshold with the largest F-score of cell pixels,
    # counted over both images together.
    probabilities = [segmenter.probabilities(picture)[..., 0] for picture in pictures]
    truths = [picture[..., 0] > 100 for picture in pictures]
    f_scores = {}
    for entry in report["sweep"]:
        found = [p >= entry["threshold"] for p in probabilities]
        hits = sum(np.sum(f & t) for f, t in zip(found, truths, strict=True))
        f_scores[entry["threshold"]] = 2 * hits / (sum(map(np.sum, found + truths)))
        assert entry["isbi_pixel_error"] == pytest.approx(1 - f_scores[entry["threshold"]])
    threshold = max(f_scores, key=f_scores.get)
    assert report["isbi_pixel_error"] == {
        "value": pytest.approx(1 - f_scores[threshold]),
        "threshold": threshold,
    }
    assert (tmp_path / "eval" / "a_evaluation.png").is_file()
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1])["mean"] == pytest.approx(report["mean"])


def test_evaluate_needs_masks(membrane_white_model: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", images(1)[0])
    with pytest.raises(ValueError, match="no masks found"):
        evaluate_path(Segmenter.from_path(membrane_white_model), tmp_path)

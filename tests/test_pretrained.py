"""The shipped model: found by name everywhere a model path goes, small, documented, good."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import unet_keras
from unet_keras.pretrained_models import HERE, SHIPPED, resolve, training_record

NAME = "isbi2012-membranes"


def test_a_name_resolves_to_the_shipped_file_unless_a_path_of_that_name_exists(
    tmp_path, monkeypatch
):
    assert resolve(NAME) == HERE / f"{NAME}.keras"
    assert resolve("runs/unet") == Path("runs/unet")  # not a shipped name: left as given
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    assert resolve(NAME) == Path(NAME)  # the user's own folder wins
    with pytest.raises(ValueError, match=f"no shipped model 'other'; shipped: {NAME}"):
        unet_keras.pretrained("other")


def test_its_remake_command_asks_for_its_network_under_todays_defaults():
    """Defaults move (batch norm, dropout, gamma): the remake command must name what it had."""
    from unet_keras import cli

    remake = training_record(NAME)["training"]["remake"]
    flags = remake.split(" -- ", 1)[1].split()
    config = cli.settings_from(cli.build_parser().parse_args(["train", *flags]))
    _, record = unet_keras.pretrained(NAME)
    assert config.model == record.model
    assert (config.augment.gamma, config.augment.contrast) == (0.0, 0.0)  # none then


def test_the_shipped_model_is_small_and_says_how_it_was_made():
    assert set(SHIPPED) == {NAME}
    assert (HERE / f"{NAME}.keras").stat().st_size <= 10 * 2**20
    made = training_record(NAME)
    assert "isbi_accuracy.py" in made["training"]["remake"]
    summary = made["training"]["summary"]
    assert summary["budget_used"] >= 0.95 or summary.get("stopped_by_patience")
    assert "non-commercial" in made["data_terms"] and "Cardona" in made["data_terms"]
    assert any("chosen on validation" in row for row in made["scores"]["table"])
    model, record = unet_keras.pretrained(NAME)
    assert record.mask.class_values == (0, 255) and record.model.classes == 1
    assert record.symmetries == "all"  # trained with quarter turns: --tta averages all 8
    # Its threshold was chosen as --calibrate-by auto chooses now, and its record says so.
    assert record.threshold.chosen_by == "pixel_error"
    assert record.threshold.to_dict() == made["training"]["summary"]["threshold"]
    assert model.count_params() == 1_940_817  # 16 filters, depth 4
    with zipfile.ZipFile(HERE / f"{NAME}.keras") as archive:  # shipped uncompiled
        assert not json.loads(archive.read("config.json")).get("compile_config")


def test_the_shipped_model_segments_held_out_isbi_sections(isbi, tmp_path):
    from unet_keras.evaluation.scores import segmentation_scores
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.io.readers import read_image, read_mask

    segmenter = Segmenter.from_path(NAME)
    errors = []
    for section in ("20", "23"):  # never seen in its training
        image = read_image(isbi / "train" / "images" / f"{section}.png")
        truth = read_mask(isbi / "train" / "masks" / f"{section}.png") == 255
        labels = segmenter.labels(segmenter.probabilities(image))
        errors.append(segmentation_scores(labels, truth.astype(int), 2)["pixel_error"])
    # The trivial all-cell answer scores 0.21; the model's record says what it scored.
    assert np.mean(errors) < 0.1
    # And from the command line, by name, out of the box.
    result = subprocess.run(
        [sys.executable, "-m", "unet_keras.cli", "predict", "--model", NAME, "--input",
         str(isbi / "test" / "images" / "00.png"), "--output", str(tmp_path / "masks")],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    mask = read_mask(tmp_path / "masks" / "00.png")
    assert mask.shape == (512, 512) and 0.6 < (mask == 255).mean() < 0.9

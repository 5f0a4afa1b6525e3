"""unet_keras.inference.predict and the predict command: files in, files out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.serving_fixtures import random_images as images
from unet_keras.cli import main
from unet_keras.inference.predict import predict_path
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.readers import read_mask, read_pages
from unet_keras.io.writers import write_image, write_stack


def test_folder_prediction_writes_masks_in_the_training_convention(
    membrane_white_model: Path, tmp_path: Path
) -> None:
    pictures = images(2)
    for name, picture in zip(("a", "b"), pictures, strict=True):
        write_image(tmp_path / "in" / f"{name}.png", picture)
    segmenter = Segmenter.from_path(membrane_white_model)
    report = predict_path(
        segmenter, tmp_path / "in", tmp_path / "out", probabilities="png", overlays=True
    )
    assert not report.failed
    assert sorted(p.name for p in report.written) == [
        "a.png",
        "a_overlay.png",
        "a_probabilities.png",
        "b.png",
        "b_overlay.png",
        "b_probabilities.png",
    ]
    probabilities = segmenter.probabilities(pictures[0])
    mask = read_mask(tmp_path / "out" / "a.png")
    # Class 1 (foreground) is mask value 0 in this model's (255, 0) convention.
    np.testing.assert_array_equal(mask, np.where(probabilities[..., 0] >= 0.5, 0, 255))
    stored = np.asarray(Image.open(tmp_path / "out" / "a_probabilities.png"))
    assert stored.dtype == np.uint16
    np.testing.assert_allclose(stored / 65535, probabilities[..., 0], atol=1e-5)
    overlay = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    assert overlay.shape == (45, 61, 3)


def test_stack_in_stack_out(membrane_white_model: Path, tmp_path: Path) -> None:
    stack = images(3, seed=1)
    write_stack(tmp_path / "volume.tif", stack)
    segmenter = Segmenter.from_path(membrane_white_model)
    predict_path(segmenter, tmp_path / "volume.tif", tmp_path / "out", probabilities="tiff")
    masks, is_stack = read_pages(tmp_path / "out" / "volume.tif")
    assert is_stack and masks.shape == (3, 45, 61, 1)
    probabilities = tifffile.imread(tmp_path / "out" / "volume_probabilities.tif")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 45, 61)
    np.testing.assert_allclose(probabilities[2], segmenter.probabilities(stack[2])[..., 0])


def test_unreadable_input_is_named_and_the_rest_processed(
    membrane_white_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "in" / "good.png", images(1)[0])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status = main(
        ["predict", "--model", str(membrane_white_model), "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_bad_options_stop_with_a_clear_message(
    membrane_white_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "a.png", images(1)[0])
    status = main(
        ["predict", "--model", str(membrane_white_model), "--input", str(tmp_path / "a.png"),
         "--output", str(tmp_path / "out"), "--tile", "70"]
    )  # fmt: skip
    assert status == 2
    assert "nearest workable: 68 or 72" in capsys.readouterr().err
    status = main(
        ["predict", "--model", str(tmp_path / "none.keras"), "--input", str(tmp_path / "a.png"),
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 2
    assert "none.keras: no such model file" in capsys.readouterr().err


def test_an_output_folder_that_would_overwrite_inputs_is_refused(
    membrane_white_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "pin"
    write_image(folder / "a.png", images(1)[0])
    write_stack(folder / "v.tif", images(2)[..., 0])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for source in (folder, folder / "a.png", folder / "v.tif"):
        status = main(
            ["predict", "--model", str(membrane_white_model), "--input", str(source),
             "--output", str(folder)]
        )  # fmt: skip
        assert status == 2
        assert "would overwrite the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

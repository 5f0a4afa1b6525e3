"""unet_keras.inference.predict and the predict/evaluate commands: files in, files out."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_keras.cli import main
from unet_keras.config import MaskConfig, ModelConfig, NormalizationConfig
from unet_keras.inference.predict import boundary_overlay, evaluate_path, predict_path
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.readers import read_mask, read_pages
from unet_keras.io.writers import write_image, write_stack
from unet_keras.model import build_unet
from unet_keras.saving import model_metadata, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny valid-padding U-Net saved with membrane-white masks: (255, 0)."""
    keras.utils.set_random_seed(5)
    config = ModelConfig(filters=4, depth=2, dropout=0.0)
    metadata = model_metadata(
        MaskConfig((255, 0)),
        NormalizationConfig("standardize", (128.0,), (50.0,), "uint8"),
        config,
        (92, 52),
    )
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_model(build_unet(**config.to_dict()), path, metadata)
    return path


def images(count: int, shape: tuple[int, int] = (45, 61), seed: int = 0) -> np.ndarray:
    """Random uint8 (count, H, W, 1) images."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape, 1), dtype=np.uint8)


def test_folder_prediction_writes_masks_in_the_training_convention(
    model_file: Path, tmp_path: Path
) -> None:
    pictures = images(2)
    for name, picture in zip(("a", "b"), pictures, strict=True):
        write_image(tmp_path / "in" / f"{name}.png", picture)
    segmenter = Segmenter.from_path(model_file)
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


def test_stack_in_stack_out(model_file: Path, tmp_path: Path) -> None:
    stack = images(3, seed=1)
    write_stack(tmp_path / "volume.tif", stack)
    segmenter = Segmenter.from_path(model_file)
    predict_path(segmenter, tmp_path / "volume.tif", tmp_path / "out", probabilities="tiff")
    masks, is_stack = read_pages(tmp_path / "out" / "volume.tif")
    assert is_stack and masks.shape == (3, 45, 61, 1)
    probabilities = tifffile.imread(tmp_path / "out" / "volume_probabilities.tif")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 45, 61)
    np.testing.assert_allclose(probabilities[2], segmenter.probabilities(stack[2])[..., 0])


def test_unreadable_input_is_named_and_the_rest_processed(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "in" / "good.png", images(1)[0])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status = main(
        ["predict", "--model", str(model_file), "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_bad_options_stop_with_a_clear_message(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "a.png", images(1)[0])
    status = main(
        ["predict", "--model", str(model_file), "--input", str(tmp_path / "a.png"),
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


def test_evaluate_scores_writes_figures_and_sweeps(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pictures = images(2, seed=2)
    for name, picture in zip(("a", "b"), pictures, strict=True):
        write_image(tmp_path / "data" / "images" / f"{name}.png", picture)
        mask = np.where(picture[..., 0] > 100, 0, 255).astype(np.uint8)  # (255, 0) convention
        write_image(tmp_path / "data" / "masks" / f"{name}.png", mask)
    status = main(
        ["evaluate", "--model", str(model_file), "--data", str(tmp_path / "data"),
         "--output", str(tmp_path / "eval"), "--sweep"]
    )  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [image["name"] for image in report["images"]] == ["a.png", "b.png"]
    segmenter = Segmenter.from_path(model_file)
    predicted = segmenter.labels(segmenter.probabilities(pictures[0]))
    truth = (pictures[0][..., 0] > 100).astype(int)
    assert report["images"][0]["scores"]["pixel_error"] == pytest.approx(
        np.mean(predicted != truth)
    )
    assert len(report["sweep"]) == 17
    best = report["best_threshold"]
    assert best["adapted_rand_error"] == min(e["adapted_rand_error"] for e in report["sweep"])
    assert (tmp_path / "eval" / "a_evaluation.png").is_file()
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1])["mean"] == pytest.approx(report["mean"])


def test_evaluate_needs_masks(model_file: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", images(1)[0])
    with pytest.raises(ValueError, match="no masks found"):
        evaluate_path(Segmenter.from_path(model_file), tmp_path)


def test_boundary_overlay_outlines_objects() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 1
    overlay = boundary_overlay(np.full((6, 6, 1), 7, np.uint8), labels)
    outline = np.all(overlay == (255, 48, 48), axis=-1)
    expected = np.zeros((6, 6), bool)
    expected[1:5, 1:5] = True
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(outline, expected)

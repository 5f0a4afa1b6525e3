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


def _segmenter_with_many_objects(model: Path, image: np.ndarray) -> Segmenter:
    """A tiny random model thresholded at its median probability on `image`: it then
    predicts many objects, so that labelling them has something to get wrong."""
    probabilities = Segmenter.from_path(model).probabilities(image)
    return Segmenter.from_path(model, threshold=float(np.median(probabilities)))


@pytest.mark.slow
def test_predict_instances_on_isbi_test_sections_writes_labels_evaluate_scores(
    isbi: Path, tiny_model_file, tmp_path: Path
) -> None:
    """Label images for the shared test stack (per section and linked), and for labelled
    sections the adapted Rand error evaluate reports equals scikit-image's on the files."""
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error

    from unet_keras.evaluation.report import evaluate_path
    from unet_keras.inference.inference_settings import InstanceConfig
    from unet_keras.record import MaskConfig

    model = tiny_model_file(mask=MaskConfig((0, 255)), seed=3)
    sections = sorted((isbi / "test" / "images").glob("*.png"))[:3]
    stack = np.stack([np.asarray(Image.open(path))[:128, :128] for path in sections])
    write_stack(tmp_path / "stack" / "test.tif", stack)
    segmenter = _segmenter_with_many_objects(model, stack[0][..., None])
    for link in (False, True):
        objects = InstanceConfig(instances="watershed", link_sections=link)
        predict_path(segmenter, tmp_path / "stack", tmp_path / f"out{link}", objects=objects)
        labels = tifffile.imread(tmp_path / f"out{link}" / "test_labels.tif")
        assert labels.shape == stack.shape and labels.dtype == np.uint32
        assert labels.max() > 10
    per_section = tifffile.imread(tmp_path / "outFalse" / "test_labels.tif")
    linked = tifffile.imread(tmp_path / "outTrue" / "test_labels.tif")
    # Linked labels are one numbering across sections; unlinked ones restart per section.
    assert linked.max() < sum(int(section.max()) for section in per_section)
    np.testing.assert_array_equal(linked > 0, per_section > 0)

    for name in ("00", "01"):
        for kind in ("images", "masks"):
            picture = np.asarray(Image.open(isbi / "train" / kind / f"{name}.png"))
            write_image(tmp_path / "data" / kind / f"{name}.png", picture[:160, :160])
    objects = InstanceConfig(instances="watershed")
    predict_path(segmenter, tmp_path / "data" / "images", tmp_path / "pred", objects=objects)
    report = evaluate_path(segmenter, tmp_path / "data", objects=objects)
    for entry in report["images"]:
        stem = Path(entry["name"]).stem
        truth = label(
            read_mask(tmp_path / "data" / "masks" / f"{stem}.png") == 255, connectivity=1
        )
        written = tifffile.imread(tmp_path / "pred" / f"{stem}_labels.tif")
        error, _, _ = adapted_rand_error(truth, written.astype(np.int64))
        assert entry["scores"]["adapted_rand_error"] == pytest.approx(error, abs=1e-9)
        assert entry["scores"]["objects"] == len(np.unique(written)) - 1


def test_predict_command_takes_the_instance_flags(
    membrane_white_model: Path, tmp_path: Path
) -> None:
    write_stack(tmp_path / "v.tif", images(3, seed=4)[..., 0])
    arguments = ["predict", "--model", str(membrane_white_model), "--input"]
    arguments += [str(tmp_path / "v.tif"), "--output", str(tmp_path / "out")]
    assert main([*arguments, "--instances", "cc", "--link-sections", "--min-overlap", "0.3"]) == 0
    labels = tifffile.imread(tmp_path / "out" / "v_labels.tif")
    assert labels.shape == (3, 45, 61) and labels.dtype == np.uint32
    # Linking needs objects to link; without --instances it is refused before any work.
    assert main([*arguments, "--link-sections"]) == 2

"""Prediction and evaluation with a model that sees neighbouring sections (context_sections
K = 1): stacks and folders predicted section by section with their context, lone images
refused, Zarr volumes equal to their sections predicted whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.context_model import explicit_context, random_stack, save_context_unet
from unet_keras import workflows
from unet_keras.evaluation.report import evaluate_path
from unet_keras.inference.inference_settings import InstanceConfig, PredictConfig
from unet_keras.inference.instances import label_objects
from unet_keras.inference.predict import predict_path
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.ome_zarr import create_volume
from unet_keras.io.readers import read_mask, read_pages
from unet_keras.io.sample import DataError
from unet_keras.io.writers import write_image, write_stack


@pytest.fixture(scope="module")
def context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_context_unet(tmp_path_factory.mktemp("context") / "k1.keras")


def expected(segmenter: Segmenter, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and masks of each section with its neighbours stacked by hand."""
    maps = np.stack(
        [segmenter.probabilities(explicit_context(stack, i)) for i in range(len(stack))]
    )
    return maps, np.stack([segmenter.mask(segmenter.labels(p)) for p in maps])


@pytest.mark.parametrize("tta", [False, True])
def test_a_stack_is_predicted_section_by_section_with_its_context(
    context_model: Path, tmp_path: Path, tta: bool
) -> None:
    stack = random_stack()
    write_stack(tmp_path / "v.tif", stack)
    segmenter = Segmenter.from_path(context_model, tta=tta)
    report = predict_path(segmenter, tmp_path / "v.tif", tmp_path / "out", probabilities="tiff")
    assert report.failed == []
    maps, masks = expected(segmenter, stack)
    written, _ = read_pages(tmp_path / "out/v.tif")
    np.testing.assert_array_equal(written[..., 0], masks)
    probabilities, _ = read_pages(tmp_path / "out/v_probabilities.tif")
    np.testing.assert_array_equal(probabilities, maps)
    # The neighbours matter: the same section with itself as context predicts otherwise.
    alone = segmenter.probabilities(np.concatenate([stack[1]] * 3, axis=-1))
    assert not np.array_equal(alone, maps[1])


def test_a_folder_is_one_stack_in_name_order(context_model: Path, tmp_path: Path) -> None:
    stack = random_stack()
    names = ["s2", "s10", "s3", "s1"]  # name order: s1, s2, s3, s10
    order = [1, 3, 2, 0]  # their places in that order
    for name, index in zip(names, order, strict=True):
        write_image(tmp_path / "in" / f"{name}.png", stack[index])
    segmenter = Segmenter.from_path(context_model)
    report = predict_path(segmenter, tmp_path / "in", tmp_path / "out")
    assert report.failed == [] and len(report.written) == 4
    _, masks = expected(segmenter, stack)
    for name, index in zip(names, order, strict=True):
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / f"{name}.png"), masks[index])


def test_lone_images_and_unlike_sections_are_refused_by_name(
    context_model: Path, tmp_path: Path
) -> None:
    segmenter = Segmenter.from_path(context_model)
    stack = random_stack(3)
    write_image(tmp_path / "lone.png", stack[0])
    report = predict_path(segmenter, tmp_path / "lone.png", tmp_path / "out")
    assert report.written == [] and len(report.failed) == 1
    assert report.failed[0][1].startswith(f"{tmp_path / 'lone.png'}: a lone image, but the model")
    write_image(tmp_path / "one/a.png", stack[0])
    with pytest.raises(DataError, match="one: a lone image"):
        predict_path(segmenter, tmp_path / "one", tmp_path / "out")
    for i, section in enumerate(stack):
        write_image(tmp_path / f"mixed/{i}.png", section)
    write_image(tmp_path / "mixed/3.png", random_stack(1, (40, 61))[0])
    report = predict_path(segmenter, tmp_path / "mixed", tmp_path / "out")
    failed = dict(report.failed)
    # Section 3 and its neighbour 2 cannot be stacked; sections 0 and 1 are predicted.
    assert sorted(Path(p).name for p in failed) == ["2.png", "3.png"]
    assert "3.png is 40 x 61 x 1 uint8 but" in failed[str(tmp_path / "mixed/3.png")]
    assert "share size, channels and dtype" in failed[str(tmp_path / "mixed/2.png")]
    with pytest.raises(DataError, match=r"takes \(H, W, 3\) images \(a section of 1 channel"):
        segmenter.probabilities(stack[0])


def test_evaluate_scores_each_section_predicted_with_its_context(
    context_model: Path, tmp_path: Path
) -> None:
    stack = random_stack()
    truth = np.where(random_stack(seed=9)[..., 0] > 100, 255, 0).astype(np.uint8)
    write_stack(tmp_path / "v-volume.tif", stack)
    write_stack(tmp_path / "v-labels.tif", truth)
    for i in range(len(stack)):
        write_image(tmp_path / f"data/images/{i}.png", stack[i])
        write_image(tmp_path / f"data/masks/{i}.png", truth[i])
    segmenter = Segmenter.from_path(context_model)
    from_stack = evaluate_path(segmenter, tmp_path / "v-volume.tif")
    from_folder = evaluate_path(segmenter, tmp_path / "data")
    _, masks = expected(segmenter, stack)
    for i, image in enumerate(from_stack["images"]):
        predicted = (masks[i] == 255).astype(np.int32)
        errors = np.mean(predicted != (truth[i] == 255))
        assert image["scores"]["pixel_error"] == pytest.approx(errors)
        assert from_folder["images"][i]["scores"] == image["scores"]
        found = label_objects(predicted, InstanceConfig())
        assert image["scores"]["objects"] == found.max()
    write_image(tmp_path / "lone/images/a.png", stack[0])
    write_image(tmp_path / "lone/masks/a.png", truth[0])
    with pytest.raises(DataError, match="lone: a lone image"):
        evaluate_path(segmenter, tmp_path / "lone")


def _volume_config(model: Path, volume: Path, output: Path) -> PredictConfig:
    return PredictConfig.from_dict(
        {
            "model": str(model),
            "input": str(volume),
            "output": str(output),
            "inference": {"tiling": {"tile": 76}},
            "block": 40,
            "probabilities": "zarr",
        }
    )


def test_a_volume_reads_each_sections_neighbours_as_context(
    context_model: Path, tmp_path: Path
) -> None:
    stack = random_stack(4, (70, 90))
    create_volume(tmp_path / "in.zarr", stack.shape[:3], (1, 32, 32), "uint8", 3, False)[...] = (
        stack[..., 0]
    )
    job = _volume_config(context_model, tmp_path / "in.zarr", tmp_path / "out.zarr")
    workflows.predict(job, progress=False)
    maps, masks = expected(Segmenter.from_path(context_model, tile=76), stack)
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    np.testing.assert_array_equal(out["labels/mask/0"][...], masks)
    np.testing.assert_array_equal(out["probabilities/0"][...], np.moveaxis(maps, -1, 0))
    np.testing.assert_array_equal(out["0"][...], stack[..., 0])


def test_a_2d_volume_is_refused_for_a_model_with_context(
    context_model: Path, tmp_path: Path
) -> None:
    create_volume(tmp_path / "flat.zarr", (70, 90), (32, 32), "uint8", 3, False)[...] = 7
    job = _volume_config(context_model, tmp_path / "flat.zarr", tmp_path / "out.zarr")
    with pytest.raises(DataError, match=r"flat.zarr: a 2D volume \(no z axis\), but the model"):
        workflows.predict(job, progress=False)

"""Training with `--context-sections K`: each section with the K sections above and below
it as input channels, from a stack or a folder of sections, refused where there is none."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unet_keras.io.sample import DataError
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.io.writers import write_image, write_stack
from unet_keras.training.prepare import prepare_data
from unet_keras.training.training_settings import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Five 64x64 sections as an ISBI-style stack (`*-volume.tif` with `*-labels.tif`)."""
    samples = synthetic_em_images(SECTIONS, (64, 64), seed=3)
    images = np.stack([s.image[..., 0] for s in samples])
    masks = np.stack([s.mask for s in samples])
    folder = tmp_path_factory.mktemp("stack")
    write_stack(folder / "em-volume.tif", images)
    write_stack(folder / "em-labels.tif", masks)
    return folder / "em-volume.tif", images, masks


def _config(data: Path | None, k: int, **options) -> TrainConfig:
    return TrainConfig(data=None if data is None else str(data), context_sections=k, **options)


def test_each_section_gets_its_neighbours_images_in_order_and_its_own_mask(stack):
    path, images, masks = stack
    plain = prepare_data(_config(path, 0, validation=2))
    data = prepare_data(_config(path, 1, validation=2))
    record = data.record
    assert record.context_sections == 1 and record.model.in_channels == 3
    assert record.section_channels == 1
    # A section's normalisation, the same for each of the 3 sections' channels.
    one = plain.record.normalization
    assert record.normalization.offset == one.offset * 3 and record.normalization.scale == (
        one.scale * 3
    )
    # The same split, by name; validation sections too see their neighbours' images.
    assert [s.name for s in data.validation_samples] == [s.name for s in plain.validation_samples]
    for sample, example in zip(data.validation_samples, data.validation, strict=True):
        index = int(sample.name[-3:-1])  # em-volume.tif[03]
        # Mirrored past the stack's ends: above section 0 is section 1.
        above, below = abs(index - 1), min(index + 1, 2 * (SECTIONS - 1) - index - 1)
        expected = np.stack([images[above], images[index], images[below]], axis=-1)
        np.testing.assert_array_equal(sample.image, expected)  # as read: calibration's
        np.testing.assert_array_equal(sample.mask, masks[index])
        np.testing.assert_allclose(
            example.image, (expected - one.offset[0]) / one.scale[0], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(example.labels, masks[index] // 255)
    assert {e.image.shape for e in data.training} == {(64, 64, 3)}


def test_a_folder_of_sections_is_stacked_in_name_order(tmp_path):
    samples = synthetic_em_images(3, (64, 64), seed=1)
    for name, sample in zip(["s2", "s10", "s1"], samples, strict=True):
        write_image(tmp_path / "images" / f"{name}.png", sample.image)
        write_image(tmp_path / "masks" / f"{name}.png", sample.mask)
    section = {n: s.image[..., 0] for n, s in zip(["s2", "s10", "s1"], samples, strict=True)}
    # Natural order s1, s2, s10, mirrored at the ends.
    neighbours = {"s1": ("s2", "s1", "s2"), "s2": ("s1", "s2", "s10"), "s10": ("s2", "s10", "s2")}
    for seed in range(3):
        data = prepare_data(_config(tmp_path, 1, validation=1, seed=seed))
        (sample,) = data.validation_samples
        expected = np.stack([section[n] for n in neighbours[sample.name[:-4]]], axis=-1)
        np.testing.assert_array_equal(sample.image, expected)


def test_context_is_refused_without_a_stack(tmp_path, stack):
    _, images, masks = stack
    write_image(tmp_path / "one" / "images" / "a.png", images[0])
    write_image(tmp_path / "one" / "masks" / "a.png", masks[0])
    lone = tmp_path / "one"
    with pytest.raises(
        DataError, match=re.escape(f"--data {lone} (--context-sections 1): a lone image")
    ):
        prepare_data(_config(lone, 1, validation=0))
    with pytest.raises(ValueError, match=r"--context-sections 2 needs a stack.*synthetic"):
        prepare_data(_config(None, 2))
    write_image(tmp_path / "mixed" / "images" / "a.png", images[0])
    write_image(tmp_path / "mixed" / "masks" / "a.png", masks[0])
    write_image(tmp_path / "mixed" / "images" / "b.png", images[1][:32])
    write_image(tmp_path / "mixed" / "masks" / "b.png", masks[1][:32])
    with pytest.raises(DataError, match="must share one size, but they are 32x64, 64x64"):
        prepare_data(_config(tmp_path / "mixed", 1, validation=0))
    with pytest.raises(ValueError, match="context_sections"):
        TrainConfig(context_sections=-1)


def test_augmentation_moves_every_channel_of_an_example_alike():
    """Elastic deformation, flips and quarter turns: sections stacked as channels stay in
    register, so three copies of one section stay three equal channels."""
    from unet_keras.training.pipeline import training_dataset
    from unet_keras.training.prepare import Example
    from unet_keras.training.training_settings import AugmentConfig

    sample = synthetic_em_images(1, (64, 64), seed=4)[0]
    image = sample.image.astype(np.float32) / 255
    example = Example(
        "s", np.concatenate([image] * 3, -1), (sample.mask // 255).astype(np.int32),
        np.ones((64, 64), np.float32),
    )  # fmt: skip
    config = AugmentConfig(rotations=True, elastic_sigma=4.0)
    for tiles, _ in training_dataset([example], 40, 40, 4, config, seed=2).take(2):
        tiles = tiles.numpy()
        assert tiles.shape[-1] == 3
        np.testing.assert_array_equal(tiles[..., 0], tiles[..., 1])
        np.testing.assert_array_equal(tiles[..., 0], tiles[..., 2])
        # Deformed: no tile is a plain crop of the section, flipped or turned.
        crops = np.lib.stride_tricks.sliding_window_view(image[..., 0], (40, 40))
        for tile in tiles:
            turns = [np.rot90(tile[..., 0], r) for r in range(4)]
            for view in turns + [np.fliplr(t) for t in turns]:
                assert not np.isclose(crops, view, atol=1e-6).all(axis=(-2, -1)).any()


def test_a_run_with_context_trains_calibrates_and_records_it(stack, tmp_path):
    """One epoch of a tiny model on the stack with K = 1: the best model takes 3 channels,
    its record says K = 1 with stacked normalisation, and the threshold was chosen on the
    validation sections with their neighbours."""
    from unet_keras.saving import load_model

    path, _, _ = stack
    run = tmp_path / "run"
    argv = ["--data", str(path), "--run-dir", str(run), "--context-sections", "1"]
    argv += ["--depth", "2", "--filters", "4", "--padding", "valid", "--tile", "60"]
    argv += ["--validation", "2", "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_keras.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model, record = load_model(run / "best.keras")
    assert record.context_sections == 1 and record.model.in_channels == 3
    assert model.input_shape[-1] == 3
    offset = record.normalization.offset
    assert len(offset) == 3 and offset[0] == offset[1] == offset[2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["threshold"] is not None and len(summary["threshold"]["images"]) == 2
    assert json.loads((run / "config.json").read_text())["context_sections"] == 1

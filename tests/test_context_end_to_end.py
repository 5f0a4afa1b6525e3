"""`--context-sections` end to end (issue 33): train on a tiny stack, predict its folder,
export, serve, and segment the folder with `unet-client`: the served masks are predict's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.serving_fixtures import ServerProcess
from unet_keras.cli import main as unet_keras
from unet_keras.client.command import main as unet_client
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.io.writers import write_stack

ROOT = Path(__file__).resolve().parents[1]


def test_a_model_with_context_from_training_to_the_client(tmp_path: Path) -> None:
    samples = synthetic_em_images(5, (64, 64), seed=4)
    images = np.stack([sample.image[..., 0] for sample in samples])
    write_stack(tmp_path / "em-volume.tif", images)
    write_stack(tmp_path / "em-labels.tif", np.stack([sample.mask for sample in samples]))
    run = tmp_path / "run"
    argv = ["--data", str(tmp_path / "em-volume.tif"), "--run-dir", str(run)]
    argv += ["--context-sections", "1", "--depth", "2", "--filters", "4", "--tile", "60"]
    argv += ["--validation", "2", "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1"]
    # Batch normalisation's moving statistics need more than 2 steps to give both classes.
    argv += ["--no-batch-norm"]
    trained = subprocess.run(
        [sys.executable, str(ROOT / "train_keras.py"), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    # The same sections as a folder, named so that only natural order keeps them in order.
    folder = tmp_path / "sections"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"s{index * 5}.png")
    predicted = tmp_path / "predicted"
    assert unet_keras(["predict", "--model", str(run), "--input", str(folder),
                       "--output", str(predicted)]) == 0  # fmt: skip
    assert unet_keras(["export", "--model", str(run), "--base-path", str(tmp_path / "unet"),
                       "--no-warmup"]) == 0  # fmt: skip
    server = ServerProcess(tmp_path / "unet", "unet", tmp_path / "server.log")
    try:
        server.wait_available()
        served = tmp_path / "served"
        argv = ["segment", str(folder), "-o", str(served), "--server", server.address]
        assert unet_client([*argv, "--model", "unet"]) == 0
    finally:
        server.terminate()
        server.wait()
    names = sorted(path.name for path in predicted.iterdir())
    assert names == sorted(f"s{index * 5}.png" for index in range(5))
    masks = [np.asarray(Image.open(predicted / name)) for name in names]
    assert all(len(np.unique(mask)) == 2 for mask in masks)  # both classes, a real comparison
    for name, expected in zip(names, masks, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(served / name)), expected)

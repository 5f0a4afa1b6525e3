"""Exports of a model that sees neighbouring sections (context_sections K = 1): the
SavedModel's request holds the sections -1, 0, +1 as channels and gives predict's output;
the ONNX tiling contract and the record say K; BioImage.IO refuses a lone test image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.context_model import explicit_context, random_stack, save_context_unet
from tests.serving_fixtures import served_alike
from unet_keras import contract
from unet_keras.cli import main
from unet_keras.exports.onnx_export import metadata
from unet_keras.exports.savedmodel import export_model
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.writers import write_image
from unet_keras.saving import read_record


def test_a_savedmodel_request_of_the_sections_around_one_gives_predicts_output(
    tmp_path: Path,
) -> None:
    model = save_context_unet(tmp_path / "k1.keras")
    version = export_model(model, tmp_path / "base", tile=76, max_pixels=10**6)
    assert read_record(version).context_sections == 1
    stack = random_stack(3)
    segmenter = Segmenter.from_path(model, tile=76)
    for index in (0, 1, 2):  # the mirrored ends and the middle
        request = explicit_context(stack, index)
        served = served_alike(version, contract.SEGMENT, image=request[None])
        expected = segmenter.probabilities(request)
        np.testing.assert_allclose(served[contract.PROBABILITIES][0], expected, atol=1e-6)
        mask = segmenter.mask(segmenter.labels(expected))
        agree = np.mean(served[contract.MASK][0] == mask)
        assert agree > 0.999  # only probabilities within 1e-6 of the threshold may differ
    # The metadata signature carries the whole record, K with it.
    text = served_alike(version, contract.METADATA)[contract.RECORD].item()
    assert json.loads(text)["context_sections"] == 1


def test_the_onnx_tiling_contract_says_k(tmp_path: Path) -> None:
    model = save_context_unet(tmp_path / "k1.keras")
    tiling = json.loads(metadata(Segmenter.from_path(model).record)[contract.ONNX_TILING])
    assert tiling["context_sections"] == 1


def test_a_bioimageio_package_refuses_a_lone_test_image(tmp_path: Path, capsys) -> None:
    model = save_context_unet(tmp_path / "k1.keras")
    lone = tmp_path / "lone.png"
    write_image(lone, random_stack(1, (128, 128))[0])
    argv = ["export", "--model", str(model), "--format", "bioimageio"]
    argv += ["--output", str(tmp_path / "p.zip"), "--test-image", str(lone)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--test-image {lone}: a lone image, but the model sees 1 section(s)" in err
    assert "context_sections" in err and not (tmp_path / "p.zip").exists()

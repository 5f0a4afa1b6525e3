"""unet_keras.exports.bioimageio: the BioImage.IO package passes bioimageio.core's own test."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from unet_keras.cli import main
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.readers import read_image


@pytest.mark.slow
def test_the_package_passes_bioimageio_cores_test(tmp_path, tiny_model_file, capsys, monkeypatch):
    from bioimageio.core import test_model

    # bioimageio.core unzips TensorFlow weights into the working directory, and sets
    # TF_ENABLE_ONEDNN_OPTS=0 for good (which would slow the TensorFlow processes that later
    # tests start). monkeypatch undoes both; the value set here is read by no one, as
    # TensorFlow in this process has started already.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))
    package = tmp_path / "unet.zip"
    argv = ["export", "--model", str(tiny_model_file()), "--format", "bioimageio"]
    assert main([*argv, "--output", str(package)]) == 0
    assert str(package) in capsys.readouterr().out
    summary = test_model(str(package))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "README.md", "test_input.npy", "test_output.npy"} <= names
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "fixed_zero_mean_unit_variance" in rdf and "halo: 20" in rdf  # depth 2: margin 20
    assert "10.1007/978-3-319-24574-4_28" in rdf
    # Never over an existing file.
    assert main([*argv, "--output", str(package)]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_each_export_format_names_the_flag_it_needs(tmp_path, capsys):
    assert main(["export", "--model", "m.keras", "--format", "bioimageio"]) == 2
    assert "export --format bioimageio needs --output" in capsys.readouterr().err
    assert main(["export", "--model", "m.keras"]) == 2
    assert "export --format savedmodel needs --base-path" in capsys.readouterr().err


@pytest.mark.slow
def test_the_package_predicts_a_real_isbi_section_as_predict_does(
    tmp_path, tiny_model_file, isbi, monkeypatch
):
    """bioimageio.core runs the package (its preprocessing, then the weights) on ISBI
    section 00: beyond the halo the package declares, the probabilities `predict` gives,
    to 1e-6. Within the halo bioimageio.core pads the image its own way before the graph
    mirrors it, and differs by up to 0.2 (measured; issue 34 takes it up); the graph fed
    the image mirrored as predict mirrors it gives predict's values there too."""
    from bioimageio.core import predict

    monkeypatch.chdir(tmp_path)  # as above: weights unzip here, oneDNN setting restored
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))
    model, package = tiny_model_file(), tmp_path / "unet.zip"
    argv = ["export", "--model", str(model), "--format", "bioimageio", "--output", str(package)]
    assert main(argv) == 0
    image = read_image(isbi / "train" / "images" / "00.png")
    sample = predict(model=str(package), inputs={"raw": image[np.newaxis]})
    packaged = np.asarray(sample.members["probabilities"].data)[0]
    expected = Segmenter.from_path(model).probabilities(image)
    assert packaged.shape == expected.shape == (512, 512, 1)
    halo = 20  # the tiny network's context margin (depth 2)
    inner = (slice(halo, -halo), slice(halo, -halo))
    np.testing.assert_allclose(packaged[inner], expected[inner], atol=1e-6)

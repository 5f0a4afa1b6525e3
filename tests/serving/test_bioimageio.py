"""unet_keras.serving.bioimageio: the BioImage.IO package passes bioimageio.core's own test."""

from __future__ import annotations

import os
import zipfile

import pytest

pytest.importorskip("bioimageio.core")

from unet_keras.cli import main


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

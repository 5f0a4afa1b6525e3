"""unet_keras.exports.bioimageio: the BioImage.IO package passes bioimageio.core's own test,
carries the zoo's metadata, and bioimageio.core predicts whole images with it as
`unet-keras predict` does."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from unet_keras.cli import main
from unet_keras.exports.bioimageio import package_sizes
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.readers import read_image
from unet_keras.record import ModelConfig

# Measured: at most 1.3e-6 (tiny model, depth 3) and 8.9e-7 (the shipped model) over a
# whole ISBI section, blocked or not; TensorFlow's kernels differ between machines a little.
TOLERANCE = 1e-5


def _rdf(package):
    return yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))


def _passes_core_test(package):
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


@pytest.mark.slow
def test_the_package_passes_bioimageio_cores_test(core_here, tiny_model_file, capsys, monkeypatch):
    from bioimageio.spec._internal import field_validation

    # The spec looks maintainers up on GitHub; this one counts as looked up already.
    monkeypatch.setattr(field_validation, "KNOWN_GITHUB_USERS", {"a-maintainer"})
    package = core_here / "unet.zip"
    argv = ["export", "--model", str(tiny_model_file()), "--format", "bioimageio"]
    people = ["--authors", "Ada Lovelace", "Alan Turing", "--maintainers", "a-maintainer"]
    extra = [*people, "--version", "3", "--git-repo", "https://example.org/lab/unet.git"]
    assert main([*argv, "--output", str(package), *extra]) == 0
    assert str(package) in capsys.readouterr().out
    _passes_core_test(package)
    names = set(zipfile.ZipFile(package).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
    rdf = _rdf(package)
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert [m["github_user"] for m in rdf["maintainers"]] == ["a-maintainer"]
    assert rdf["version"] == "3" and rdf["git_repo"] == "https://example.org/lab/unet.git"
    assert rdf["inputs"][0]["pad"] == {"mode": "reflect"}
    assert rdf["outputs"][0]["axes"][1]["halo"] == 20  # depth 2: margin 20, on the grid
    assert [c["doi"] for c in rdf["cite"]] == ["10.1007/978-3-319-24574-4_28"]
    assert rdf.get("training_data") is None  # nothing is known of this model's data
    card = zipfile.ZipFile(package).read("README.md").decode()
    assert "## Validation" in card and "Not recorded with this model." in card
    # Never over an existing file.
    assert main([*argv, "--output", str(package)]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_each_export_format_names_the_flag_it_needs(tmp_path, capsys):
    assert main(["export", "--model", "m.keras", "--format", "bioimageio"]) == 2
    assert "export --format bioimageio needs --output" in capsys.readouterr().err
    assert main(["export", "--model", "m.keras"]) == 2
    assert "export --format savedmodel needs --base-path" in capsys.readouterr().err


def test_bad_package_settings_are_refused_by_flag(tmp_path, tiny_model_file, capsys):
    argv = ["export", "--model", str(tiny_model_file()), "--format", "bioimageio"]
    argv += ["--output", str(tmp_path / "p.zip")]
    assert main([*argv, "--git-repo", "github.com/lab/unet"]) == 2
    assert "--git-repo github.com/lab/unet: expected an https:// URL" in capsys.readouterr().err
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (64, 64)).save(rgb)
    assert main([*argv, "--test-image", str(rgb)]) == 2
    err = capsys.readouterr().err
    assert f"--test-image {rgb}: 3 channel(s) of uint8; the model was trained on 1" in err
    assert not (tmp_path / "p.zip").exists() and not list(tmp_path.glob(".p*"))


def test_the_halo_is_the_margin_on_the_pooling_grid():
    # Depth 4: margin 92, pooling cells of 16: the image's first pixel starts a cell only
    # if the halo bioimageio.core pads with is a multiple of 16.
    assert package_sizes(ModelConfig(depth=4, padding="valid")) == (96, 208, 16)
    assert package_sizes(ModelConfig(depth=3, padding="valid")) == (48, 104, 8)
    assert package_sizes(ModelConfig(depth=4, padding="same")) == (0, 16, 16)


@pytest.mark.slow
def test_the_package_predicts_a_real_isbi_section_as_predict_does(
    core_here, tiny_model_file, isbi
):
    """bioimageio.core runs the package (its padding, preprocessing, then each of its
    weights: the SavedModel and the ONNX file) on ISBI section 00: the whole image, and the
    image in blocks, get the probabilities `predict` gives, to TOLERANCE. Depth 3, whose
    margin (44) is off the pooling grid (8): the halo, 48, puts it on."""
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    config = ModelConfig(filters=4, depth=3, padding="valid", dropout=0.0)
    model, package = tiny_model_file(config=config), core_here / "unet.zip"
    section = isbi / "train" / "images" / "00.png"
    argv = ["export", "--model", str(model), "--format", "bioimageio", "--output", str(package)]
    assert main([*argv, "--test-image", str(section)]) == 0
    image = read_image(section)
    expected = Segmenter.from_path(model).probabilities(image)
    description = load_model_description(str(package))
    formats = ("tensorflow_saved_model_bundle", "onnx")
    assert set(description.weights.model_dump(exclude_none=True)) == set(formats)
    for weights in formats:
        pipeline = create_prediction_pipeline(description, weight_format=weights)
        # Whole; blocks of 104 + 8 * 8 pixels, 48 of them halo each side.
        for blocks in (None, 8):
            sample = predict(
                model=pipeline, inputs={"raw": image[np.newaxis]}, blocksize_parameter=blocks
            )
            packaged = np.asarray(sample.members["probabilities"].data)[0]
            assert packaged.shape == expected.shape == (512, 512, 1)
            np.testing.assert_allclose(packaged, expected, rtol=0, atol=TOLERANCE, err_msg=weights)
    # The package's own test is that section and predict's output of it.
    archive = zipfile.ZipFile(package)
    np.testing.assert_array_equal(np.load(io.BytesIO(archive.read("test_input.npy")))[0], image)
    cover = Image.open(io.BytesIO(archive.read("cover.png")))
    assert cover.size == (512, 256)  # the zoo's 2:1
    section_panel = np.asarray(cover, np.float64)[:, :256]
    shrunk = image[..., 0].reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert np.corrcoef(section_panel.ravel(), shrunk.ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_the_shipped_models_package(core_here, isbi):
    """`unet-keras export --model isbi2012-membranes --format bioimageio` is the zoo's
    package of the shipped model: bioimageio.core's test passes, it cites the data, and it
    predicts held-out section 20 as predict does."""
    from bioimageio.core import predict

    package, section = core_here / "isbi2012-membranes.zip", isbi / "train" / "images" / "20.png"
    argv = ["export", "--model", "isbi2012-membranes", "--format", "bioimageio"]
    assert main([*argv, "--output", str(package), "--test-image", str(section)]) == 0
    _passes_core_test(package)
    rdf = _rdf(package)
    assert {c["doi"] for c in rdf["cite"]} == {
        "10.1007/978-3-319-24574-4_28",
        "10.3389/fnana.2015.00142",
        "10.1371/journal.pbio.1000502",
        "10.1371/journal.pone.0038011",
    }
    assert "No licence identifier is known" in rdf["training_data"]["description"]
    assert "halo" not in rdf["outputs"][0]["axes"][1]  # same padding: no margin to crop
    assert set(rdf["weights"]) == {"tensorflow_saved_model_bundle", "onnx"}
    card = zipfile.ZipFile(package).read("README.md").decode()
    from unet_keras.pretrained_models import training_record

    made = training_record("isbi2012-membranes")
    threshold = made["training"]["summary"]["threshold"]["value"]
    assert f"Threshold {threshold:g}, chosen by pixel_error" in card
    assert next(row for row in made["scores"]["table"] if "chosen on validation" in row) in card
    image = read_image(section)
    sample = predict(model=str(package), inputs={"raw": image[np.newaxis]})
    packaged = np.asarray(sample.members["probabilities"].data)[0]
    expected = Segmenter.from_path("isbi2012-membranes").probabilities(image)
    np.testing.assert_allclose(packaged, expected, rtol=0, atol=TOLERANCE)

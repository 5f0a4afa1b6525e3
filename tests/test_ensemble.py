"""Trained models as one (`unet-keras ensemble`): the mean of the members' probability maps,
whatever each member's normalisation, in one model file and in every export; members that
do not fit together, and fine-tuning an ensemble, are refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.serving_fixtures import TINY, save_unet, served_alike, tiny_unet
from unet_keras import contract
from unet_keras.cli import main
from unet_keras.ensemble import make_ensemble
from unet_keras.inference.segmenter import Segmenter
from unet_keras.record import Calibration, NormalizationConfig
from unet_keras.saving import load_model, read_record, save_model


def _member(path: Path, seed: int, **changes: object) -> Path:
    """A tiny U-Net of `seed` saved to `path`, its record changed by `changes`."""
    model, record = tiny_unet(seed=seed)
    save_model(model, path, dataclasses.replace(record, **changes))
    return path


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    """Two members of one shape that differ in weights, normalisation, threshold and
    symmetries."""
    first = _member(
        tmp_path / "a.keras",
        7,
        threshold=Calibration(0.3, "pixel_error", ("v",), {}, {}),
        symmetries="all",
    )
    second = _member(
        tmp_path / "b.keras",
        8,
        normalization=NormalizationConfig("standardize", (100.0,), (50.0,), "uint8"),
        threshold=Calibration(0.5, "pixel_error", ("v",), {}, {}),
        symmetries="flips",
    )
    return [first, second]


def _image(shape: tuple[int, int] = (100, 130)) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (*shape, 1), dtype=np.uint8)


def test_the_ensemble_predicts_the_mean_of_its_members(tmp_path: Path, members) -> None:
    output = tmp_path / "ensemble.keras"
    record = make_ensemble(members, output)
    assert [p.name for p in tmp_path.iterdir()].count("ensemble.keras") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert read_record(output) == record
    assert record.members == 2 and record.symmetries == "flips"
    assert record.threshold.value == pytest.approx(0.4)
    assert record.normalization == read_record(members[0]).normalization
    image = _image()
    alone = [Segmenter.from_path(path, tile=76).probabilities(image) for path in members]
    together = Segmenter.from_path(output, tile=76).probabilities(image)
    np.testing.assert_allclose(together, np.mean(alone, axis=0), atol=1e-6)
    assert np.ptp(alone[0] - alone[1]) > 0.01  # the members do differ
    # Test-time augmentation averages the flips both members were trained with.
    flipped = Segmenter.from_path(output, tile=76, tta=True)
    assert len(flipped.symmetries) == 2


def test_the_ensemble_is_one_keras_model(tmp_path: Path, members) -> None:
    output = tmp_path / "ensemble.keras"
    make_ensemble(members, output, threshold=0.6)
    model, record = load_model(output)
    assert record.threshold.value == 0.6
    assert model.count_params() == 2 * load_model(members[0])[0].count_params()
    tiles = np.random.default_rng(0).normal(size=(1, 76, 76, 1)).astype(np.float32)
    again = Path(tmp_path / "again.keras")
    save_model(model, again, record)
    np.testing.assert_array_equal(model(tiles), load_model(again)[0](tiles))


def test_tf_serving_serves_the_ensemble_as_predict_predicts_it(tmp_path: Path, members) -> None:
    from unet_keras.exports.savedmodel import export_model

    output = tmp_path / "ensemble.keras"
    make_ensemble(members, output)
    version = export_model(output, tmp_path / "base", tile=76, max_pixels=10**6)
    image = _image((90, 70))
    served = served_alike(version, contract.SEGMENT, image=image[None])
    expected = Segmenter.from_path(output, tile=76).probabilities(image)
    np.testing.assert_allclose(served[contract.PROBABILITIES][0], expected, atol=1e-6)


def test_the_onnx_export_runs_the_ensemble_as_keras_does(tmp_path: Path, members) -> None:
    import onnx

    from unet_keras.exports.onnx_export import export_onnx

    output = tmp_path / "ensemble.keras"
    make_ensemble(members, output)
    exported = export_onnx(output, tmp_path / "ensemble.onnx", tile=76)
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    image = _image((90, 120))
    expected = Segmenter.from_path(output, tile=76).probabilities(image)
    got = Segmenter.from_path(exported, tile=76).probabilities(image)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_bioimageio_package_of_an_ensemble_passes_the_zoos_test(
    tmp_path: Path, members, core_here
) -> None:
    from tests.exports.test_bioimageio import _passes_core_test, _rdf

    output = tmp_path / "ensemble.keras"
    make_ensemble(members, output)
    package = tmp_path / "ensemble.zip"
    assert (
        main(
            ["export", "--model", str(output), "--format", "bioimageio", "--output", str(package)]
        )
        == 0
    )
    _passes_core_test(package)
    assert _rdf(package)["description"].startswith("The mean of 2 U-Nets")


def test_members_that_do_not_fit_together_are_named(tmp_path: Path, members) -> None:
    deeper = save_unet(tmp_path / "deep.keras", config=dataclasses.replace(TINY, depth=3))
    with pytest.raises(
        ValueError, match=r"deep\.keras cannot join an ensemble with .*a\.keras: depth 3 against 2"
    ):
        make_ensemble([members[0], deeper], tmp_path / "e.keras")
    white = _member(tmp_path / "white.keras", 9)
    record = read_record(white)
    masks = dataclasses.replace(record.mask, class_values=(255, 0))
    save_model(load_model(white)[0], white, dataclasses.replace(record, mask=masks))
    flipped = r"white\.keras cannot join .*: mask .*\(255, 0\).* against .*\(0, 255\)"
    with pytest.raises(ValueError, match=flipped):
        make_ensemble([members[0], white], tmp_path / "e.keras")
    with pytest.raises(ValueError, match="at least two models, got 1"):
        make_ensemble(members[:1], tmp_path / "e.keras")
    with pytest.raises(ValueError, match=r"--models: .*a\.keras is listed twice"):
        make_ensemble([members[0], members[1], members[0]], tmp_path / "e.keras")
    with pytest.raises(ValueError, match=r"--output .*a\.keras: is one of the models"):
        make_ensemble(members, members[0])
    assert not (tmp_path / "e.keras").exists()
    make_ensemble(members, tmp_path / "e.keras")
    with pytest.raises(ValueError, match=r"e\.keras: an ensemble already"):
        make_ensemble([tmp_path / "e.keras", members[0]], tmp_path / "f.keras")


def test_the_command_writes_it_and_fine_tuning_an_ensemble_is_refused(
    tmp_path: Path, members, synthetic_data: Path, capsys
) -> None:
    output = tmp_path / "ensemble.keras"
    argv = ["ensemble", "--models", *map(str, members), "--output", str(output)]
    assert main(argv) == 0
    assert f"wrote the ensemble of 2 models to {output}" in capsys.readouterr().out
    assert main(["ensemble", "--models", str(members[0]), "--output", str(output)]) == 2
    assert "--models: an ensemble needs at least two models" in capsys.readouterr().err
    argv = ["train", "--data", str(synthetic_data), "--run-dir", str(tmp_path / "run")]
    assert main([*argv, "--init-from", str(output), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--init-from {output}: an ensemble of 2 models" in err
    assert not (tmp_path / "run" / "best.keras").exists()

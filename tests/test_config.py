"""Settings and records: values checked where they arrive, a JSON round trip, defaults kept
for sections given in part."""

import dataclasses
import json
from pathlib import Path

import pytest

from unet_keras.inference.inference_settings import InferenceConfig, PredictConfig
from unet_keras.record import (
    Calibration,
    MaskConfig,
    ModelConfig,
    ModelRecord,
    NormalizationConfig,
    TileSizes,
)
from unet_keras.server.server_settings import ServeConfig
from unet_keras.settings import Settings
from unet_keras.training.training_settings import AugmentConfig, TrainConfig

ALL = [
    MaskConfig(),
    NormalizationConfig(),
    AugmentConfig(),
    ModelConfig(),
    TrainConfig(),
    InferenceConfig(),
    PredictConfig("run", "in", "out"),
    ServeConfig("exports/unet"),
]


@pytest.mark.parametrize("settings", ALL, ids=lambda s: type(s).__name__)
def test_every_settings_class_round_trips_through_json(settings: Settings):
    text = json.dumps(settings.to_dict())
    assert type(settings).from_dict(json.loads(text)) == settings


@pytest.mark.parametrize("settings", ALL, ids=lambda s: type(s).__name__)
def test_every_field_has_help(settings: Settings):
    for field in dataclasses.fields(settings):
        assert field.metadata.get("help"), f"{type(settings).__name__}.{field.name}"


def test_a_record_round_trips_with_its_calibration():
    calibration = Calibration(0.4, "adapted_rand_error", ("a.png",), {"pixel_error": 0.1}, {})
    record = ModelRecord(
        MaskConfig((255, 0)),
        NormalizationConfig("standardize", (120.0,), (40.0,), "uint8"),
        ModelConfig(filters=8, depth=2),
        TileSizes(92, 52),
        calibration,
    )
    again = ModelRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.threshold_value == 0.4
    assert dataclasses.replace(record, threshold=None).threshold_value == 0.5
    assert ModelRecord(record.mask, record.normalization, record.model, (92, 52)).tile == (
        TileSizes(92, 52)
    )


def test_a_record_from_before_the_symmetries_field_reads_as_trained_with_all_8():
    record = ModelRecord(
        MaskConfig((0, 255)),
        NormalizationConfig("standardize", (120.0,), (40.0,), "uint8"),
        ModelConfig(filters=8, depth=2),
        TileSizes(92, 52),
        symmetries="flips",
    )
    older = {key: value for key, value in record.to_dict().items() if key != "symmetries"}
    assert ModelRecord.from_dict(older).symmetries == "all"
    assert ModelRecord.from_dict(record.to_dict()).symmetries == "flips"


@pytest.mark.parametrize(
    ("flips", "rotations", "symmetries"),
    [
        (True, True, "all"),
        (True, False, "flips"),
        (False, True, "rotations"),
        (False, False, "none"),
    ],
)
def test_the_augmentation_names_the_symmetries_it_draws_from(flips, rotations, symmetries):
    assert AugmentConfig(flips=flips, rotations=rotations).symmetries == symmetries


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "ten"}, r"TrainConfig\.epochs: expected an integer, got 'ten'"),
        ({"epochs": 2.5}, r"TrainConfig\.epochs: expected an integer, got 2\.5"),
        ({"jit_compile": "yes"}, r"TrainConfig\.jit_compile: expected true or false"),
        ({"loss": "focal"}, r"TrainConfig\.loss must be one of \('cross_entropy'"),
        ({"class_values": 255}, r"TrainConfig\.class_values: expected a list, got 255"),
        ({"model": {"depth": "deep"}}, r"ModelConfig\.depth: expected an integer"),
        ({"model": {"width": 3}}, r"ModelConfig: unknown setting\(s\) \['width'\]"),
        ({"augment": {"elastic_grid": [3]}}, r"elastic_grid: expected 2 values"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"learning_rate": -1.0}, "learning_rate must be positive"),
        ({"model": {"dropout": 1.0}}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_values_name_the_setting_and_what_was_expected(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_values_are_converted_to_their_types():
    config = TrainConfig.from_dict(
        {"epochs": 3.0, "w0": 2, "class_values": [0, 255], "data": Path("data/train")}
    )
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.w0 == 2.0 and isinstance(config.w0, float)
    assert config.class_values == (0, 255) and config.data == "data/train"


def test_a_section_given_in_part_keeps_the_rest_of_its_default():
    config = TrainConfig.from_dict({"model": {"depth": 3}, "augment": {"gamma": 0.2}})
    assert config.model == dataclasses.replace(TrainConfig().model, depth=3)
    assert config.model.filters == 16  # the training default, not ModelConfig's 64
    assert config.augment == dataclasses.replace(TrainConfig().augment, gamma=0.2)
    assert config.augment.contrast == 0.25  # the training default, not AugmentConfig's 0


def test_records_from_elsewhere_are_checked():
    with pytest.raises(ValueError, match=r"ModelRecord: expected a mapping"):
        ModelRecord.from_dict([1, 2])
    with pytest.raises(ValueError, match=r"ModelRecord: missing setting\(s\) \['model'"):
        ModelRecord.from_dict({"mask": {}})
    with pytest.raises(ValueError, match=r"NormalizationConfig: scale must be positive|scale"):
        NormalizationConfig("standardize", (0.0,), (0.0,))
    with pytest.raises(ValueError, match="two distinct pixel values"):
        MaskConfig((5, 5))


def test_serve_settings_need_both_tls_files():
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        ServeConfig("base", tls_cert="cert.pem")

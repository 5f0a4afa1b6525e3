"""The `unet-keras` command: flags made from the settings, config files, each subcommand's
job, and one clear line for bad input."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_keras import cli
from unet_keras.record import ModelConfig
from unet_keras.server.server_settings import MAX_MESSAGE_BYTES, ServeConfig
from unet_keras.settings import Settings, choices
from unet_keras.training.training_settings import TrainConfig

# A tiny model on small images: depth 2 valid padding takes 60 px tiles to 20 px outputs.
TINY = ["--depth", "2", "--filters", "4", "--padding", "valid", "--tile", "60"]
TINY += ["--validation", "2"]
TINY += ["--batch-size", "2", "--steps-per-epoch", "3", "--dropout", "0"]


def _config(argv):
    return cli.settings_from(cli.build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_setting_has_its_flag_help_and_choices(name):
    """Flags come from the settings classes: each field is a flag (or a positional
    argument), with its help, its default and, for Literal types, its choices."""
    command = cli.COMMANDS[name]
    parser = cli.build_parser()
    subparser = parser._subparsers._group_actions[0].choices[name]
    actions = {action.dest: action for action in subparser._actions}

    def walk(cls: type[Settings], section: str = "") -> None:
        for field in dataclasses.fields(cls):
            if not field.metadata.get("cli", True):
                assert field.name not in actions
                continue
            dest = f"{section}.{field.name}" if section else field.name
            default = field.default
            if isinstance(default, Settings):
                walk(type(default), dest)
                continue
            action = actions[dest]
            assert action.help.startswith(field.metadata["help"]), dest
            allowed = choices(cli.field_types(cls)[field.name])
            assert action.choices == (tuple(allowed) if allowed else None), dest

    walk(command.settings)


def test_nested_flags_keep_the_rest_of_their_sections_default():
    # --depth alone must not reset the default filters (16 for training) to ModelConfig's.
    config = _config(["--depth", "3"])
    expected = ModelConfig(filters=16, padding="same", batch_norm=True, dropout=0.0, depth=3)
    assert config.model == expected
    # --gamma alone must not reset the default contrast to AugmentConfig's 0.
    assert _config(["--gamma", "0.1"]).augment.contrast == TrainConfig().augment.contrast > 0


def test_init_from_brings_its_networks_shape_unless_flags_say_otherwise(tmp_path):
    from tests.serving_fixtures import TINY as SOURCE
    from tests.serving_fixtures import save_unet

    source = str(save_unet(tmp_path / "source.keras"))  # depth 2, 4 filters, valid padding
    shape = ("depth", "filters", "padding", "batch_norm")
    config = _config(["--init-from", source])
    assert [getattr(config.model, name) for name in shape] == [2, 4, "valid", False]
    assert [getattr(SOURCE, name) for name in shape] == [2, 4, "valid", False]
    assert config.model.dropout == TrainConfig().model.dropout  # not the network's shape
    config = _config(["--init-from", source, "--filters", "8", "--batch-norm"])
    assert (config.model.depth, config.model.filters, config.model.batch_norm) == (2, 8, True)
    with pytest.raises(ValueError, match=r"^--init-from .*missing.keras: .*no such model file"):
        _config(["--init-from", str(tmp_path / "missing.keras")])


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("epochs: 7\nmodel:\n  filters: 8\n  depth: 3\naugment:\n  gamma: 0.3\n")
    config = _config(["--config", str(settings), "--filters", "12", "--no-flips"])
    assert config.epochs == 7 and config.model.depth == 3 and config.augment.gamma == 0.3
    assert config.model.filters == 12 and config.augment.flips is False
    assert config.learning_rate == TrainConfig().learning_rate
    (tmp_path / "settings.json").write_text(json.dumps({"class_values": [255, 0]}))
    assert _config(["--config", str(tmp_path / "settings.json")]).class_values == (255, 0)


def test_help_explains_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--max-time", "--run-dir", "--elastic-sigma", "--strategy", "--class-values"):
        assert flag in text
    assert "(default: 16)" in text  # --filters
    assert "(default: 10.0)" in text  # --elastic-sigma and --w0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tile", "290"], "--tile: input size 290 does not fit.*same padding.*288 or 304"),
        (["--strategy", "multiworker"], "needs the TF_CONFIG environment variable"),
        (["--classes", "3"], "--classes 3 does not match the masks: 2 classes"),
        (["--mask-threshold", "128"], "--mask-threshold needs --class-values"),
        (["--validation", "6"], "--validation 6 leaves no training image of 6"),
    ],
)
def test_bad_settings_stop_before_training(synthetic_data, tmp_path, capsys, argv, message):
    code = cli.main(
        ["train", "--data", str(synthetic_data), "--run-dir", str(tmp_path / "r"), *argv]
    )
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r" / "last.keras").exists()


def test_a_choice_not_offered_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--loss", "focal"])
    assert exited.value.code == 2
    assert "argument --loss: invalid choice: 'focal'" in capsys.readouterr().err


def test_a_bad_config_file_is_named(tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text("{epochs: 3")
    assert cli.main(["train", "--config", str(settings)]) == 2
    assert f"--config {settings}: not valid JSON" in capsys.readouterr().err
    settings.write_text(json.dumps({"epochs": "ten"}))
    assert cli.main(["train", "--config", str(settings)]) == 2
    assert "TrainConfig.epochs: expected an integer, got 'ten'" in capsys.readouterr().err
    settings.write_text(json.dumps({"epoch": 3}))
    assert cli.main(["train", "--config", str(settings)]) == 2
    assert "unknown setting(s) ['epoch']" in capsys.readouterr().err


def test_serve_flags_follow_tensorflow_model_server():
    args = cli.build_parser().parse_args(
        ["serve", "--model-base-path", "exports/unet", "--port", "9000"]
    )
    config = cli.settings_from(args)
    assert config == ServeConfig("exports/unet", port=9000)
    assert (config.model_name, config.host, config.max_message_bytes) == (
        "unet", "127.0.0.1", MAX_MESSAGE_BYTES,
    )  # fmt: skip


def test_the_command_imports_no_tensorflow():
    check = "import sys, unet_keras.cli; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_synthetic_then_inspect(tmp_path, capsys):
    assert cli.main(["synthetic", str(tmp_path / "data"), "--count", "3", "--size", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == [
        "synthetic_00.png",
        "synthetic_01.png",
        "synthetic_02.png",
    ]
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "data")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == report["labelled"] == 3
    assert report["sizes"] == ["64x64"]
    # Synthetic masks follow ISBI: 255 = cell interior (the majority), 0 = membrane.
    assert report["mask"]["class_values"] == [0, 255]
    assert report["class_fractions"]["0"] < 0.5
    # Sparse masks: a third of each mask's rows unlabelled (128) is reported as such.
    for mask_path in (tmp_path / "data" / "masks").iterdir():
        mask = np.array(Image.open(mask_path))
        mask[::3] = 128
        Image.fromarray(mask).save(mask_path)
    assert cli.main(["inspect", str(tmp_path / "data"), "--ignore-value", "128"]) == 0
    sparse = json.loads(capsys.readouterr().out)
    assert sparse["mask"]["class_values"] == [0, 255] and sparse["mask"]["ignore_value"] == 128
    assert sparse["unlabelled_fraction"] == round(22 / 64, 4)


def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("unet-keras inspect: error:") and "missing" in error


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "unet-keras"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "synthetic" in result.stdout and "inspect" in result.stdout

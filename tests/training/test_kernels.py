"""--onednn: the kernels a training run loads TensorFlow with."""

import logging
import os
import subprocess
import sys

from unet_keras.training import kernels


def test_auto_turns_onednn_on_for_narrow_models_on_x86_only(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    assert kernels.onednn_setting("auto", 16) == "1"
    assert kernels.onednn_setting("auto", 32) == "1"
    assert kernels.onednn_setting("auto", 64) is None  # slower there: TensorFlow's choice
    assert kernels.onednn_setting("on", 64) == "1"
    assert kernels.onednn_setting("off", 16) == "0"
    monkeypatch.setattr(kernels.platform, "machine", lambda: "aarch64")
    assert kernels.onednn_setting("auto", 16) is None
    # What the user exported wins over auto, not over an explicit flag.
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert kernels.onednn_setting("auto", 16) is None
    assert kernels.onednn_setting("on", 16) == "1"


def test_tensorflow_loads_with_the_choice_and_the_environment_is_left_as_it_was(synthetic_data):
    # (test_fit's first run checks auto and --onednn off end to end.) Training prepares
    # its data first: that must not load TensorFlow, or the choice would come too late.
    probe = (
        "import os, sys; from unet_keras.training.training_settings import TrainConfig; "
        "from unet_keras.training.prepare import prepare_data; "
        f"prepare_data(TrainConfig(data={str(synthetic_data)!r})); "
        "print('tensorflow' in sys.modules, end=' '); "
        "from unet_keras.training.kernels import load_tensorflow; "
        "print(load_tensorflow('on', 16), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True", "None"], result.stderr[-2000:]


def test_once_tensorflow_is_loaded_its_setting_stays_and_a_different_choice_is_logged(caplog):
    enabled = kernels.onednn_enabled()
    before = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    other = "off" if enabled else "on"
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert kernels.load_tensorflow(other, 16) is enabled
    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == before
    assert f"--onednn {other}: TensorFlow was loaded before" in caplog.text

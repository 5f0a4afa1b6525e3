"""Library == command line: a job run from Python gives what its command gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unet_keras.saving import read_record

ROOT = Path(__file__).resolve().parents[1]
# Deterministic kernels: the two runs must agree to the last bit, not only in distribution.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_DETERMINISTIC_OPS": "1"}
# The same tiny run, as flags and as settings.
FLAGS = ["--depth", "2", "--filters", "4", "--dropout", "0", "--tile", "60"]
FLAGS += ["--validation", "2", "--batch-size", "2", "--steps-per-epoch", "3", "--epochs", "2"]
SETTINGS = {"model": {"depth": 2, "filters": 4, "dropout": 0.0}, "tile": 60, "validation": 2}
SETTINGS |= {"batch_size": 2, "steps_per_epoch": 3, "epochs": 2}


@pytest.mark.slow
def test_training_from_python_equals_unet_keras_train(synthetic_data: Path, tmp_path: Path):
    by_command, by_library = tmp_path / "command", tmp_path / "library"
    command = [sys.executable, str(ROOT / "train_keras.py"), "--data", str(synthetic_data)]
    command += ["--run-dir", str(by_command), *FLAGS]
    script = (
        "import sys, json\n"
        "from unet_keras import TrainConfig, train\n"
        "settings = json.loads(sys.argv[1])\n"
        "train(TrainConfig.from_dict(settings))\n"
    )
    settings = {**SETTINGS, "data": str(synthetic_data), "run_dir": str(by_library)}
    # Both at once, one per core: deterministic kernels make them agree all the same.
    processes = [
        subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True)
        for argv in (command, [sys.executable, "-c", script, json.dumps(settings)])
    ]
    for process in processes:
        stderr = process.communicate(timeout=600)[1]
        assert process.returncode == 0, stderr[-3000:]

    timing = ("wall_seconds", "training_images_per_second", "run_dir")
    runs = (by_command, by_library)
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    for summary in summaries:
        for key in timing:
            summary.pop(key)
    assert summaries[0] == summaries[1]
    assert summaries[0]["threshold"] is not None  # both chose one on the validation images
    records = [read_record(run) for run in runs]
    assert records[0] == records[1] and records[0].threshold is not None
    configs = [json.loads((run / "config.json").read_text()) for run in runs]
    assert configs[0] | {"run_dir": ""} == configs[1] | {"run_dir": ""}

"""Training over several replicas: mirrored devices, a local two-worker cluster, and the
agreement workers need to stay in step."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unet_keras.training.fit  # noqa: F401  (registers the losses compiled models need)
from unet_keras import cli
from unet_keras.training import distribute

ROOT = Path(__file__).resolve().parents[2]
# A tiny model on small images: depth 2 valid padding takes 60 px tiles to 20 px outputs.
TINY = ["--depth", "2", "--filters", "4", "--padding", "valid", "--tile", "60"]
# float32: the workers' metrics are compared with one process's to 1e-4, which bf16 misses.
TINY += ["--validation", "2", "--precision", "float32"]
TINY += ["--batch-size", "2", "--steps-per-epoch", "3", "--dropout", "0"]


ONE_WORKER = {"worker": ["127.0.0.1:1"]}


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ("{'cluster': ", "TF_CONFIG must be JSON like"),
        (
            json.dumps({"cluster": ONE_WORKER, "task": {"type": "worker"}}),
            "TF_CONFIG must be JSON like .* could not read it",
        ),
        (
            json.dumps({"cluster": ONE_WORKER, "task": {"type": "worker", "index": 1}}),
            "TF_CONFIG names task worker 1, but its cluster has 1 worker address",
        ),
    ],
)  # fmt: skip
def test_a_bad_tf_config_stops_before_connecting(
    synthetic_data, tmp_path, capsys, monkeypatch, tf_config, message
):
    import re

    monkeypatch.setenv("TF_CONFIG", tf_config)
    argv = ["train", "--data", str(synthetic_data), "--run-dir", str(tmp_path / "r")]
    assert cli.main([*argv, "--strategy", "multiworker"]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_mirrored_strategy_trains_over_two_logical_cpus(synthetic_data, tmp_path):
    from unet_keras.saving import load_model

    run = tmp_path / "run"
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "two = [tf.config.LogicalDeviceConfiguration()] * 2\n"
        "tf.config.set_logical_device_configuration(cpu, two)\n"
        "from unet_keras.cli import main\n"
        "assert main(['train', *sys.argv[1:], '--batch-size', '3']) == 2\n"
        "sys.exit(main(['train', *sys.argv[1:]]))\n"
    )  # fmt: skip
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), "--epochs", "2", *TINY]
    argv += ["--weight-average", "0.9"]  # its variables beside mirrored ones
    result = subprocess.run(
        [sys.executable, "-c", script, *argv, "--strategy", "mirrored"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy mirrored: 2 replica(s)" in result.stderr
    assert "--batch-size 3 cannot be split evenly over 2 replicas" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and np.isfinite(summary["best_validation"]["val_loss"])
    average, _ = load_model(run / "average.keras")
    last, _ = load_model(run / "last.keras")
    differ = [not np.array_equal(a, b) for a, b in zip(average.weights, last.weights, strict=True)]
    assert any(differ) and all(np.isfinite(w).all() for w in average.get_weights())


def _run_workers(*argvs: list[str]) -> list[tuple[int, str]]:
    """(exit status, stderr) of training processes, one per argv, in one local cluster."""
    from tests.serving_fixtures import free_port

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in argvs]}
    tasks = [{"type": "worker", "index": index} for index, _ in enumerate(argvs)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train_keras.py"), *argv, "--strategy", "multiworker"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": task}),
            },
        )
        for argv, task in zip(argvs, tasks, strict=True)
    ]
    # A worker that never stops (waiting on the others) fails the test rather than hangs it.
    stderrs = [worker.communicate(timeout=300)[1] for worker in workers]
    return [(worker.returncode, stderr) for worker, stderr in zip(workers, stderrs, strict=True)]


@pytest.mark.slow
def test_multiworker_trains_two_local_workers_to_identical_weights(synthetic_data, tmp_path):
    from unet_keras.saving import load_model
    from unet_keras.training import pipeline
    from unet_keras.training.prepare import prepare_data

    run = tmp_path / "run"
    # With batch normalisation, each worker's moving statistics follow its own batches
    # unless the workers average them; the weights compared below include them.
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), *TINY, "--batch-norm"]
    # Summed in bfloat16, the gradients must still leave every worker the same weights.
    argv += ["--gradient-exchange", "bfloat16", "--weight-average", "0.9"]
    # Far more epochs than the budget allows: after every step the workers ask each other
    # whether it is spent, and must all stop after the same one.
    budget = [*argv, "--epochs", "500", "--max-time", "8"]
    for code, stderr in _run_workers(budget, budget):
        assert code == 0, stderr[-3000:]
        assert "strategy multiworker: 2 replica(s)" in stderr
        assert "gradients summed over the replicas in bfloat16" in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_time_budget"] and 1 <= summary["epochs"] < 500
    assert (run / "best.keras").is_file()
    chief, _ = load_model(run / "last.keras", compile=True)
    other, _ = load_model(run / "worker-1" / "last.keras", compile=True)
    trained_steps = int(chief.optimizer.iterations.numpy())
    assert trained_steps >= 1 and int(other.optimizer.iterations.numpy()) == trained_steps
    assert any("moving_mean" in weight.path for weight in chief.weights)
    for mine, theirs in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    # So are their weight averages, which validation scored.
    chief, _ = load_model(run / "average.keras", compile=True)
    other, _ = load_model(run / "worker-1" / "average.keras")
    for mine, theirs in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)

    # Validation was split over the workers; its metrics must be those of one process.
    data = prepare_data(cli.settings_from(cli.build_parser().parse_args(["train", *argv])))
    tile = data.record.tile
    # Batches of one, as each worker scored them (a batch of 2 may round a bf16
    # convolution differently and flip a pixel at p = 0.5).
    validation = pipeline.validation_dataset(data.validation, tile.input, tile.output, 1)
    scores = chief.evaluate(validation, verbose=0, return_dict=True)
    with open(run / "log.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    # Split wrongly, a metric would be off by whole tiles (2 % of the pixels each); a
    # pixel or two is 1e-4 of them.
    for name in ("pixel_error", "iou", "dice"):
        assert float(last[f"val_{name}"]) == pytest.approx(scores[name], rel=1e-3), name


@pytest.mark.parametrize(
    ("other_worker", "message"),
    [
        (lambda settings, epoch: [settings + 1, epoch], "were started with different settings"),
        (lambda settings, epoch: [settings, 0.0], r"resume after different epochs \[3, 0\]"),
    ],
)
def test_workers_that_would_run_different_steps_stop(monkeypatch, other_worker, message):
    # What two workers report when, say, only one of them sees the chief's state.json.
    def all_workers(strategy, values):
        return [values, other_worker(*values)]

    monkeypatch.setattr(distribute, "all_workers", all_workers)
    with pytest.raises(ValueError, match=message):
        distribute.check_workers_agree(None, {"seed": 0}, epoch=3)


def test_gradients_are_summed_in_the_exchange_dtype_and_updated_in_their_own():
    import keras
    import tensorflow as tf

    from unet_keras.training.fit import gradient_exchange

    assert gradient_exchange("auto", "mixed_bfloat16") == "bfloat16"
    assert gradient_exchange("auto", "float32") == "float32"
    assert gradient_exchange("float32", "mixed_bfloat16") == "float32"
    variable = keras.Variable(np.zeros(3, "float32"))
    gradient = tf.constant([1.0 + 2**-10, 3.0, -0.1])  # 1 + 2**-10 is below bf16's precision
    for dtype, expected in [("float32", gradient), ("bfloat16", [1.0, 3.0, -0.10009765625])]:
        optimizer = keras.optimizers.Adam()
        distribute.sum_gradients_in(optimizer, dtype)
        # One replica: the sum over replicas is the gradient itself, in the exchange dtype.
        [(summed, _)] = optimizer._all_reduce_sum_gradients([(gradient, variable)])
        assert summed.dtype == tf.float32
        np.testing.assert_array_equal(summed.numpy(), np.asarray(expected, "float32"))

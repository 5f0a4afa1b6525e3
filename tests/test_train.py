"""Training: settings from flags and files, run directory, resume after SIGKILL, budget."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from unet_keras import cli
from unet_keras.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# A tiny model on small images: depth 2 valid padding takes 60 px tiles to 20 px outputs.
TINY = ["--depth", "2", "--filters", "4", "--tile", "60", "--validation", "2"]
TINY += ["--batch-size", "2", "--steps-per-epoch", "3", "--dropout", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Six 96x96 synthetic image/mask pairs in images/ and masks/."""
    folder = tmp_path_factory.mktemp("data")
    assert cli.main(["synthetic", str(folder), "--count", "6", "--size", "96"]) == 0
    return folder


def _config(argv):
    args = cli.build_parser().parse_args(["train", *argv])
    return cli.train_config(args)


def _train(*argv):
    return subprocess.run(
        [sys.executable, str(ROOT / "train_keras.py"), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


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
        (["--tile", "290"], "--tile: input size 290 does not fit.*nearest workable: 284 or 300"),
        (["--strategy", "multiworker"], "needs the TF_CONFIG environment variable"),
        (["--classes", "3"], "--classes 3 does not match the masks: 2 classes"),
        (["--mask-threshold", "128"], "--mask-threshold needs --class-values"),
        (["--validation", "6"], "--validation 6 leaves no training image of 6"),
        (["--loss", "focal"], "loss must be one of"),
    ],
)
def test_bad_settings_stop_before_training(data_dir, tmp_path, capsys, argv, message):
    code = cli.main(["train", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"), *argv])
    assert code == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r" / "last.keras").exists()


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
    data_dir, tmp_path, capsys, monkeypatch, tf_config, message
):
    import re

    monkeypatch.setenv("TF_CONFIG", tf_config)
    argv = ["train", "--data", str(data_dir), "--run-dir", str(tmp_path / "r")]
    assert cli.main([*argv, "--strategy", "multiworker"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_run_leaves_its_files_and_a_loadable_best_model(data_dir, tmp_path):
    from unet_keras.saving import load_model

    run = tmp_path / "run"
    result = _train("--data", str(data_dir), "--run-dir", str(run), "--epochs", "2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"best model: {run / 'best.keras'}"
    for name in ("config.json", "last.keras", "best.keras", "state.json", "summary.json"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if ".partial" in p.name]
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "val_loss", "val_pixel_error", "val_iou"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["training_images_per_second"] > 0
    assert 0 <= summary["best_validation"]["val_pixel_error"] <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["class_values"] == [0, 255] and config["model"]["classes"] == 1
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    model, metadata = load_model(run)
    # The threshold is chosen on the validation images and stored with the model.
    assert summary["threshold"]["images"] == summary["validation_images"]
    assert len(summary["validation_images"]) == 2
    assert metadata["threshold"]["value"] == summary["threshold"]["value"]
    assert metadata["mask"]["class_values"] == [0, 255]
    assert metadata["tile"] == {"input": 60, "output": 20}
    assert model.predict(np.zeros((1, 60, 60, 1)), verbose=0).shape == (1, 20, 20, 1)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_last_completed_epoch(data_dir, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train_keras.py"), "--data", str(data_dir)]
    argv += ["--run-dir", str(run), "--epochs", "4", *TINY, "--steps-per-epoch", "8"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < 4

    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run} after epoch {killed_at}" in result.stderr
    with open(run / "log.csv") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle)]
    assert epochs == ["1", "2", "3", "4"]  # no finished epoch lost, none repeated
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4
    assert not [p for p in run.iterdir() if ".partial" in p.name]
    # The optimizer state came back too: its step count spans all 4 epochs of 8 steps.
    from unet_keras.saving import load_model

    last, _ = load_model(run / "last.keras")
    assert int(last.optimizer.iterations) == 32


def test_a_run_directory_refuses_other_settings(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({**TrainConfig().to_dict(), "seed": 99}))
    code = cli.main(["train", "--data", str(data_dir), "--run-dir", str(run), *TINY])
    assert code == 2
    assert "holds a run with other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_mirrored_strategy_trains_over_two_logical_cpus(data_dir, tmp_path):
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
    argv = ["--data", str(data_dir), "--run-dir", str(run), "--epochs", "2", *TINY]
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
def test_multiworker_trains_two_local_workers_to_identical_weights(data_dir, tmp_path):
    from unet_keras.saving import load_model
    from unet_keras.training import pipeline
    from unet_keras.training.fit import prepare_data

    run = tmp_path / "run"
    argv = ["--data", str(data_dir), "--run-dir", str(run), "--epochs", "2", *TINY]
    # With a time budget the workers ask each other after every step whether it is spent.
    budget = [*argv, "--max-time", "600"]
    for code, stderr in _run_workers(budget, budget):
        assert code == 0, stderr[-3000:]
        assert "strategy multiworker: 2 replica(s)" in stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert (run / "best.keras").is_file()
    chief, _ = load_model(run / "last.keras")
    other, _ = load_model(run / "worker-1" / "last.keras")
    trained_steps = int(chief.optimizer.iterations.numpy())
    assert trained_steps >= 1 and int(other.optimizer.iterations.numpy()) == trained_steps
    for mine, theirs in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)

    # Validation was split over the workers; its metrics must be those of one process.
    data = prepare_data(_config(argv))
    validation = pipeline.validation_dataset(data.validation, *data.tile, batch_size=2)
    scores = chief.evaluate(validation, verbose=0, return_dict=True)
    with open(run / "log.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    for name in ("pixel_error", "iou", "dice"):
        assert float(last[f"val_{name}"]) == pytest.approx(scores[name], rel=1e-4), name


def test_the_time_budget_stops_every_worker_when_one_has_spent_it(monkeypatch):
    from unet_keras.training import distribute
    from unet_keras.training import fit as train

    budget = train.TimeBudget(seconds=3600)
    budget.set_model(types.SimpleNamespace(distribute_strategy=None, stop_training=False))
    budget.on_train_begin()
    monkeypatch.setattr(distribute, "any_worker", lambda strategy, flag: flag)
    budget.on_train_batch_end(0)
    assert not budget.model.stop_training  # nobody is past the deadline
    monkeypatch.setattr(distribute, "any_worker", lambda strategy, flag: True)
    budget.on_train_batch_end(1)  # this worker is not past it, another one is
    assert budget.model.stop_training and budget.reached


@pytest.mark.parametrize(
    ("other_worker", "message"),
    [
        (lambda settings, epoch: [settings + 1, epoch], "were started with different settings"),
        (lambda settings, epoch: [settings, 0.0], r"resume after different epochs \[3, 0\]"),
    ],
)
def test_workers_that_would_run_different_steps_stop(monkeypatch, other_worker, message):
    from unet_keras.training import distribute
    from unet_keras.training import fit as train

    # What two workers report when, say, only one of them sees the chief's state.json.
    def all_workers(strategy, values):
        return [values, other_worker(*values)]

    monkeypatch.setattr(distribute, "all_workers", all_workers)
    with pytest.raises(ValueError, match=message):
        train._check_workers_agree(None, {"seed": 0}, epoch=3)


@pytest.mark.slow
def test_bfloat16_with_xla_trains_to_a_finite_loss(data_dir, tmp_path):
    run = tmp_path / "run"
    result = _train(
        "--data", str(data_dir), "--run-dir", str(run), "--epochs", "1", *TINY,
        "--precision", "mixed_bfloat16", "--jit-compile",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["best_validation"]["val_loss"])

"""Training runs: the files a run leaves, resume after SIGKILL, mixed precision with XLA."""

import contextlib
import csv
import io
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import unet_keras.training.fit  # noqa: F401  (registers the losses compiled models need)
from unet_keras.training.callbacks import TrainingPlan

ROOT = Path(__file__).resolve().parents[2]
# A tiny model on small images: depth 2 valid padding takes 60 px tiles to 20 px outputs.
TINY = ["--depth", "2", "--filters", "4", "--padding", "valid", "--tile", "60"]
TINY += ["--validation", "2"]
TINY += ["--batch-size", "2", "--steps-per-epoch", "3", "--dropout", "0"]


def _start(*argv) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train_keras.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _train(*argv) -> subprocess.CompletedProcess:
    process = _start(*argv)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _train_here(*argv) -> subprocess.CompletedProcess:
    """`_train` in this process, printing and logging as `unet-keras train` does: a new
    process's TensorFlow import is half of a tiny run's 17 s on AVX2. What needs a process
    of its own (a kill, TensorFlow's kernels chosen as it loads) runs `_train`."""
    from unet_keras import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    root, handler = logging.getLogger(), logging.StreamHandler(stderr)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # pytest's handlers make `main`'s basicConfig a no-op
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = cli.main(["train", *argv])
    except SystemExit as exit:  # a flag argparse refuses
        status = exit.code
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


def test_a_run_leaves_its_files_and_a_loadable_best_model(synthetic_data, tmp_path):
    from unet_keras.saving import load_model

    run = tmp_path / "run"
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), "--epochs", "2", *TINY]
    # Given --max-time too, the run ends at whichever comes first: here the epochs.
    result = _train_here(*argv, "--max-time", "600")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"best model: {run / 'best.keras'}"
    assert re.search(r"^Epoch 2/2 \(\d+% of the 600 s budget used\)$", result.stdout, re.M)
    for name in ("config.json", "last.keras", "best.keras", "state.json", "summary.json"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if ".partial" in p.name]
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "val_loss", "val_pixel_error", "val_iou"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["training_images_per_second"] > 0
    assert not summary["stopped_by_time_budget"]
    assert 0 <= summary["best_validation"]["val_pixel_error"] <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["class_values"] == [0, 255] and config["model"]["classes"] == 1
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    model, record = load_model(run)
    # The threshold is chosen on the validation images and stored with the model.
    assert summary["threshold"]["images"] == summary["validation_images"]
    assert summary["threshold"]["chosen_by"] == "pixel_error"  # the default for full masks
    assert len(summary["validation_images"]) == 2
    assert record.threshold.to_dict() == summary["threshold"]
    assert record.mask.class_values == (0, 255)
    assert record.tile.to_dict() == {"input": 60, "output": 20}
    assert model.predict(np.zeros((1, 60, 60, 1)), verbose=0).shape == (1, 20, 20, 1)

    # Rerun with another criterion, the finished run chooses its threshold again, untrained;
    # the CPU kernels may change too (in a new process: TensorFlow reads them as it loads).
    log = (run / "log.csv").read_text()
    objects = "adapted_rand_error"
    again = _train(*argv, "--max-time", "600", "--calibrate-by", objects, "--onednn", "off")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "log.csv").read_text() == log
    assert json.loads((run / "summary.json").read_text())["onednn"] is False
    chosen = json.loads((run / "summary.json").read_text())["threshold"]
    assert chosen["chosen_by"] == objects
    assert chosen["scores"][objects] <= summary["threshold"]["scores"][objects]
    assert load_model(run)[1].threshold.to_dict() == chosen


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_last_completed_epoch(synthetic_data, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train_keras.py"), "--data", str(synthetic_data)]
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

    result = _train_here(*argv[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run} after epoch {killed_at}" in result.stderr
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]  # none lost, none repeated
    # The schedule went on where it stopped: each epoch ends at its point of one cosine.
    from unet_keras.training.callbacks import TrainingPlan

    plan = TrainingPlan(1e-3, "cosine", warmup=0.03, steps=32)
    for epoch, row in enumerate(rows, 1):
        expected = plan.learning_rate(epoch * 8 / 32)
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4
    assert not [p for p in run.iterdir() if ".partial" in p.name]
    # The optimizer state came back too: its step count spans all 4 epochs of 8 steps.
    from unet_keras.saving import load_model

    last, _ = load_model(run / "last.keras", compile=True)
    assert int(last.optimizer.iterations) == 32


@pytest.mark.slow
def test_bfloat16_with_xla_trains_to_a_finite_loss(synthetic_data, tmp_path):
    import keras

    from unet_keras.saving import load_model

    run = tmp_path / "run"
    before = keras.mixed_precision.global_policy().name
    result = _train_here(
        "--data", str(synthetic_data), "--run-dir", str(run), "--epochs", "1", *TINY,
        "--precision", "mixed_bfloat16", "--jit-compile",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Keras's global policy is as it was: models built after the run are not bfloat16.
    assert keras.mixed_precision.global_policy().name == before
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["best_validation"]["val_loss"])
    # Both took effect: the layers compute in bfloat16, the step was compiled with XLA.
    model, _ = load_model(run / "last.keras", compile=True)
    assert model.get_layer("down1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("output").dtype_policy.name == "float32"
    assert model.jit_compile is True


def test_a_time_budget_is_used_whole_and_the_schedule_spans_it(synthetic_data, tmp_path):
    run = tmp_path / "run"
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), *TINY]
    # 15 s: on a slow CPU (AVX2, oneDNN's first steps) the first epoch's tracing took 9 s
    # of a 12 s budget before the step was traced once, not twice (now about 5 s).
    result = _train(*argv, "--max-time", "15", "--steps-per-epoch", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_time_budget"] and summary["epochs"] >= 2
    assert summary["budget_used"] >= 0.95
    if platform.machine() == "x86_64" and "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        assert summary["onednn"] is True  # --onednn auto, for a narrow model, in a new process
    # Each epoch is headed by the budget's share used, not "Epoch 2/1000000".
    headings = re.findall(r"^Epoch \S+ .*$", result.stdout, re.MULTILINE)
    assert re.fullmatch(r"Epoch 1 \(\d+% of the 15 s budget used\)", headings[0]), headings
    assert len(headings) == summary["epochs"] and "/" not in "".join(headings)
    shares = [int(re.search(r"(\d+)%", heading)[1]) / 100 for heading in headings]
    # Stopped by the budget: the last epoch began inside it (its share rounds to 100% at
    # most), none after it ended.
    assert shares == sorted(shares) and 0.5 <= shares[-1] <= 1, headings
    with open(run / "log.csv") as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)]
    # Warm-up and cosine by elapsed time: each epoch ends on the schedule's rate at a share
    # of the budget between its heading's and the next one's (the last one's: 1, rate 0).
    # How far the first epoch gets depends on the machine's speed, so no fixed rate is asked.
    schedule = TrainingPlan(1e-3, "cosine", 0.03).learning_rate
    assert rates[-1] < 0.05 * 1e-3
    for rate, start, end in zip(rates, shares, [*shares[1:], 1.0], strict=True):
        # +-0.01: the headings round the share to a whole percent.
        span = [*np.linspace(max(start - 0.01, 0), min(end + 0.01, 1), 101), 0.03]
        possible = [schedule(p) for p in span if start - 0.01 <= p <= end + 0.01]
        assert min(possible) - 1e-9 <= rate <= max(possible) + 1e-9, (rates, shares)


def test_patience_stops_a_run_that_stopped_improving_and_a_rerun_with_more_resumes(
    synthetic_data, tmp_path
):
    run = tmp_path / "run"
    # A rate too small to change a weight: the validation score never improves on epoch 1's
    # (without batch normalisation, whose moving statistics move at any rate).
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), *TINY, "--no-batch-norm"]
    argv += ["--epochs", "40", "--learning-rate", "1e-12", "--schedule", "constant"]
    result = _train_here(*argv, "--patience", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_patience"] and not summary["stopped_by_time_budget"]
    assert (summary["best_epoch"], summary["epochs"]) == (1, 3)
    # Rerun as it was, the run stays stopped; with more patience it goes on where it was.
    assert _train_here(*argv, "--patience", "2").returncode == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    result = _train_here(*argv, "--patience", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_patience"] and (summary["best_epoch"], summary["epochs"]) == (1, 5)
    with open(run / "log.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4", "5"]
    # Patience without validation images would wait forever: refused by name.
    refused = ["--run-dir", str(tmp_path / "refused"), "--validation", "0", "--patience", "2"]
    result = _train_here("--data", str(synthetic_data), *refused)
    assert result.returncode != 0 and "--validation" in result.stderr


def _same_weights(one: Path, other: Path) -> bool:
    """Whether two model files hold the same weights, batch normalisation's moving
    statistics aside: the average's are gathered anew (tests/training/test_batch_statistics.py)."""
    from unet_keras.saving import load_model

    models = [load_model(path)[0] for path in (one, other)]
    return all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(models[0].weights, models[1].weights, strict=True)
        if "moving" not in a.path
    )


def test_a_weight_averaged_run_keeps_its_average_as_the_best_model_and_resumes_it(
    synthetic_data, tmp_path
):
    run = tmp_path / "run"
    argv = ["--data", str(synthetic_data), "--run-dir", str(run), *TINY]
    argv += ["--validation", "0", "--weight-average", "0.9"]
    for epochs in ("2", "3"):
        result = _train_here(*argv, "--epochs", epochs)
        assert result.returncode == 0, result.stderr[-3000:]
        # No validation images: the average is the best model known; training resumes
        # from the weights themselves.
        assert _same_weights(run / "best.keras", run / "average.keras")
        assert not _same_weights(run / "best.keras", run / "last.keras")
    assert f"resuming {run} after epoch 2" in result.stderr
    assert not [p for p in run.iterdir() if ".partial" in p.name]


def test_a_run_keeps_its_last_average_unless_told_to_keep_the_best_epoch(synthetic_data, tmp_path):
    from unet_keras.saving import load_model

    argv = ["--data", str(synthetic_data), *TINY, "--epochs", "2"]  # 2 validation images
    last = tmp_path / "last"
    result = _train_here(*argv, "--run-dir", str(last), "--weight-average", "0.9")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _same_weights(last / "best.keras", last / "average.keras")
    assert json.loads((last / "summary.json").read_text())["kept_epoch"] == 2
    # --keep best: a rate too small to move a weight never improves on epoch 1's score, so
    # epoch 1's model is kept: 3 steps into training, where last.keras is 6.
    import unet_keras.training.losses  # noqa: F401  (the compiled loss, to load the optimizer)

    def steps(path):
        return int(load_model(path, compile=True)[0].optimizer.iterations.numpy())

    best = tmp_path / "best"
    argv += ["--learning-rate", "1e-12", "--schedule", "constant", "--weight-average", "0"]
    argv += ["--no-batch-norm"]  # whose moving statistics move at any rate
    result = _train_here(*argv, "--run-dir", str(best), "--keep", "best")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((best / "summary.json").read_text())
    assert (summary["kept_epoch"], summary["best_epoch"], summary["epochs"]) == (1, 1, 2)
    assert (steps(best / "best.keras"), steps(best / "last.keras")) == (3, 6)
    # Told nothing, the same run keeps its last epoch.
    result = _train_here(*argv, "--run-dir", str(tmp_path / "default"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps(tmp_path / "default" / "best.keras") == 6


def test_sparse_annotations_train_and_the_record_keeps_the_ignore_value(tmp_path):
    """Masks with unlabelled strips (value 128) train end to end with --ignore-value; the
    model's record carries it, so evaluate skips those pixels too."""
    from unet_keras.io.synthetic import synthetic_em_images
    from unet_keras.io.writers import write_image
    from unet_keras.saving import read_record

    for sample in synthetic_em_images(5, (64, 64), seed=2):
        sample.mask[::4] = 128
        write_image(tmp_path / "data" / "images" / f"{sample.name}.png", sample.image)
        write_image(tmp_path / "data" / "masks" / f"{sample.name}.png", sample.mask)
    run = tmp_path / "run"
    argv = ["--data", str(tmp_path / "data"), "--run-dir", str(run), "--epochs", "1", *TINY]
    result = _train_here(*argv, "--ignore-value", "128")
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_record(run / "best.keras")
    assert record.mask.ignore_value == 128 and record.mask.class_values == (0, 255)
    # Forgetting the flag with the classes named: the unlabelled value is an error.
    refused = _train_here(
        *argv, "--run-dir", str(tmp_path / "other"), "--class-values", "0", "255"
    )
    assert refused.returncode != 0 and "mask values 128" in refused.stderr


def test_a_run_starts_from_another_with_its_encoder_fixed_at_first(synthetic_data, tmp_path):
    from unet_keras.saving import load_model

    data = ["--data", str(synthetic_data), *TINY, "--epochs", "1"]
    first = _train_here(*data, "--run-dir", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr[-3000:]
    # Another shape fails before any training, saying which flag differs (run meanwhile).
    other = _start(*data, "--run-dir", str(tmp_path / "other"), "--filters", "8",
                   "--init-from", str(tmp_path / "first"))  # fmt: skip
    second = tmp_path / "second"
    result = _train_here(*data, "--run-dir", str(second), "--init-from", str(tmp_path / "first"),
                    "--freeze-encoder", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"weights from {tmp_path / 'first'}" in result.stderr
    source, _ = load_model(tmp_path / "first")
    tuned, _ = load_model(second / "last.keras")
    for before, after in zip(source.weights, tuned.weights, strict=True):
        same = np.array_equal(before.numpy(), after.numpy())
        assert same == after.path.startswith(("down", "bottom")), after.path
    _, refusal = other.communicate(timeout=600)
    assert other.returncode != 0 and "--filters 4 there, 8 here" in refusal
    assert not (tmp_path / "other" / "config.json").exists()  # nothing to refuse a rerun


def test_auto_precision_is_bf16_only_with_native_bf16_and_onednn(monkeypatch):
    """Without oneDNN, bf16 ran 57x slower even on a CPU with native bf16."""
    from unet_keras.training import fit

    flags = set(Path("/proc/cpuinfo").read_text().split())
    native = bool({"avx512_bf16", "amx_bf16"} & flags) and fit.onednn_enabled()
    assert fit.precision_policy("auto") == ("mixed_bfloat16" if native else "float32")
    assert fit.precision_policy("float32") == "float32"
    monkeypatch.setattr(fit, "onednn_enabled", lambda: False)
    assert fit.precision_policy("auto") == "float32"

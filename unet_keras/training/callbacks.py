"""The callbacks of a training run: checkpoints and logs, the schedule and time budget,
the workers' shared statistics, image summaries."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet_keras.io.atomic import atomic_path
from unet_keras.record import ModelRecord
from unet_keras.saving import save_model
from unet_keras.training import distribute
from unet_keras.training.run_directory import RunDirectory

log = logging.getLogger(__name__)

# The validation score that picks best.keras (lower is better).
MONITOR = "val_pixel_error"


class WeightAverage(keras.callbacks.Callback):
    """An exponential moving average of the weights, swapped in for validation and for
    the checkpoint's best.keras; training goes on with the weights themselves.

    The momentum is at most (1 + t) / (10 + t) after t steps (timm's warm-up): a run of a
    thousand steps averages about its last hundred, not its first. Unlike Keras's
    optimizer EMA, the average survives a resumed run: the checkpoint saves it as
    average.keras.
    """

    FILE = "average.keras"

    def __init__(self, momentum: float, run: RunDirectory, resumed: bool) -> None:
        super().__init__()
        self.momentum, self.run, self.resumed = momentum, run, resumed
        self.weights: list = []
        self.average: list[tf.Variable] = []
        self.kept: list[tf.Variable] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.weights = _averaged_weights(self.model)
        self.kept = [tf.Variable(w, trainable=False) for w in self.weights]
        saved = self.run.file(self.FILE)
        if self.resumed and saved.is_file():
            self.model.load_weights(saved)
        elif self.resumed:  # a run begun before averaging was its default
            log.warning("%s is missing: the weight average starts again here", saved)
        self.average = [tf.Variable(w, trainable=False) for w in self.weights]
        _assign(self.weights, self.kept)  # a resumed run goes on from last.keras's weights

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._update(tf.cast(self.model.optimizer.iterations, tf.float32))

    @tf.function
    def _update(self, steps: tf.Tensor) -> None:
        momentum = tf.minimum(self.momentum, (1.0 + steps) / (10.0 + steps))
        for average, weight in zip(self.average, self.weights, strict=True):
            average.assign(momentum * average + (1.0 - momentum) * weight)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block."""
        self.on_test_begin()
        try:
            yield
        finally:
            self.on_test_end()

    def on_test_begin(self, logs: dict | None = None) -> None:
        _assign(self.kept, self.weights)
        _assign(self.weights, self.average)

    def on_test_end(self, logs: dict | None = None) -> None:
        _assign(self.weights, self.kept)


class RunCheckpoint(keras.callbacks.Callback):
    """Saves last.keras, best.keras, log.csv and state.json after every epoch.

    With a `WeightAverage`, best.keras holds the averaged weights (which validation scored)
    and last.keras the weights training resumes from.
    """

    def __init__(
        self,
        run: RunDirectory,
        record: ModelRecord,
        state: dict,
        started: float,
        average: WeightAverage | None = None,
    ) -> None:
        super().__init__()
        self.run, self.record, self.state, self.started = run, record, state, started
        self.average = average
        self.rows = self._previous_rows(state["epoch"])
        self.batches = 0

    def _previous_rows(self, epochs: int) -> list[dict[str, str]]:
        """Rows of log.csv up to the resumed epoch (a killed epoch may have left more)."""
        path = self.run.file("log.csv")
        if not path.exists():
            return []
        with open(path, newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        score = logs.get(MONITOR)
        save_model(self.model, self.run.file("last.keras"), self.record)
        improved = score is not None and (self.state["best"] is None or score < self.state["best"])
        with self.average.swapped_in() if self.average else contextlib.nullcontext():
            if self.average:
                save_model(self.model, self.run.file(self.average.FILE), self.record)
            if improved:
                save_model(self.model, self.run.file("best.keras"), self.record)
        if improved:
            self.state.update(best=float(score), best_epoch=epoch + 1, best_logs=_floats(logs))
        now = time.monotonic()
        row = {"epoch": str(epoch + 1), "seconds": f"{now - self.started:.2f}"}
        self.rows.append({**row, **{k: f"{v:.6g}" for k, v in logs.items()}})
        self._write_log()
        self.state["seconds"] += now - self.started
        self.started = now
        self.state["epoch"] = epoch + 1
        self.state["images"] += self.batches * self.state["batch_size"]
        self.batches = 0
        # Written last: it must never name an epoch whose model is not on disk yet.
        self.run.write_json("state.json", self.state)

    def _write_log(self) -> None:
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.run.file("log.csv")) as temporary:
            temporary.write_text(text.getvalue())


def patience_spent(state: dict, patience: int) -> bool:
    """Whether the run's best validation score is `patience` epochs old (never with 0)."""
    best_epoch = state["best_epoch"]
    return bool(patience) and best_epoch is not None and state["epoch"] - best_epoch >= patience


class Patience(keras.callbacks.Callback):
    """Stops training once the best validation score is `patience` epochs old.

    It reads the run's `state` that `RunCheckpoint` keeps, so it must come after it, and a
    resumed run counts the epochs of its earlier sessions.
    """

    def __init__(self, state: dict, patience: int) -> None:
        super().__init__()
        self.state, self.patience = state, patience
        self.reached = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if patience_spent(self.state, self.patience):
            self.reached = True
            self.model.stop_training = True


class TrainingPlan(keras.callbacks.Callback):
    """Sets the learning rate from the run's progress each step; stops at the time budget.

    Progress runs from 0 to 1 over the time budget (`seconds`, counted over every session
    of the run: `spent` is what earlier sessions used, this one's clock runs from
    `started`) or over `steps`, whichever ends first. A cosine schedule warms up linearly
    over the first `warmup` of it, then decays to 0 at the end, so a run of any length ends
    on its best-tuned steps; a resumed run takes the schedule up where the killed one left
    it.
    """

    def __init__(
        self,
        rate: float,
        schedule: str = "cosine",
        warmup: float = 0.0,
        seconds: float | None = None,
        steps: int | None = None,
        spent: float = 0.0,
        started: float | None = None,
    ) -> None:
        super().__init__()
        self.rate, self.schedule, self.warmup = rate, schedule, warmup
        self.seconds, self.steps, self.spent = seconds, steps, spent
        self.started = time.monotonic() if started is None else started
        self.reached = False

    def progress(self) -> tuple[float, float]:
        """How much of the steps and of the time budget are done, 0 to 1 each (0 when
        unbounded; the time is the latest clock of all workers)."""
        iterations = keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        steps = int(iterations) / self.steps if self.steps else 0.0
        seconds = 0.0
        if self.seconds is not None:
            elapsed = self.spent + time.monotonic() - self.started
            seconds = distribute.latest(self.model.distribute_strategy, elapsed) / self.seconds
        return min(steps, 1.0), min(seconds, 1.0)

    def learning_rate(self, progress: float) -> float:
        """The schedule's rate at `progress`."""
        if self.schedule == "constant":
            return self.rate
        if progress < self.warmup:
            return self.rate * progress / self.warmup
        decayed = (progress - self.warmup) / max(1.0 - self.warmup, 1e-9)
        return self.rate * 0.5 * (1.0 + math.cos(math.pi * decayed))

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._follow(max(self.progress()))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps, seconds = self.progress()
        self._follow(max(steps, seconds))
        if seconds >= 1.0:
            # Every worker read the same clock, so all stop after the same step.
            self.reached = True
            self.model.stop_training = True

    def _follow(self, progress: float) -> None:
        """Sets the optimizer's rate for the next step."""
        self.model.optimizer.learning_rate.assign(self.learning_rate(progress))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class SharedStatistics(keras.callbacks.Callback):
    """Averages the batch-normalisation moving statistics over the workers of a cluster.

    Gradients are averaged every step, but each worker's moving mean and variance follow
    its own batches only, so without this the workers' models differ. Averaged before
    validation (split over the workers: all must score one model) and at each epoch's end
    (before the checkpoint), every worker holds the chief's model.
    """

    def _average(self) -> None:
        variables = _moving_statistics(self.model)
        if not variables:
            return
        local = np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in variables])
        everyone = distribute.all_workers(self.model.distribute_strategy, local.tolist())
        mean = np.mean(np.asarray(everyone), axis=0)
        ends = np.cumsum([np.prod(variable.shape) for variable in variables])
        for variable, piece in zip(variables, np.split(mean, ends[:-1]), strict=True):
            variable.assign(piece.reshape(variable.shape))

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._average()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._average()


class EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras's progress log, with each epoch headed by the share of the time budget used.

    A run bounded by time alone has no last epoch to count to: Keras would print
    `Epoch 12/1000000`.
    """

    def __init__(self, plan: TrainingPlan) -> None:
        super().__init__()
        self.plan = plan

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._reset_progbar()
        self._maybe_init_progbar()
        if not self.verbose:
            return
        # The plan counts steps only when the epochs are bounded.
        heading = f"Epoch {epoch + 1}" + (f"/{self.epochs}" if self.plan.steps else "")
        if self.plan.seconds is not None:
            used = self.plan.progress()[1]
            heading += f" ({used:.0%} of the {self.plan.seconds:g} s budget used)"
        print(heading, flush=True)


class ValidationImages(keras.callbacks.Callback):
    """Writes input | truth | prediction image summaries of a few validation tiles."""

    def __init__(self, log_dir: Path, tiles: list[tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir / "validation_images"))
        self.tiles = tiles

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        panels = []
        for image, targets in self.tiles:
            # A direct call, not predict: that gathers over workers, and this is local work.
            probabilities = np.asarray(self.model(image[None], training=False))[0]
            size = targets.shape[0]
            margin = (image.shape[0] - size) // 2
            shown = image[margin : margin + size, margin : margin + size, :1]
            shown = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-6)
            classes = max(probabilities.shape[-1], 2) - 1
            predicted = (
                probabilities[..., :1] >= 0.5
                if probabilities.shape[-1] == 1
                else probabilities.argmax(-1)[..., None]
            )
            # Unlabelled pixels (sparse annotations) show mid-grey: apart from binary classes.
            truth = np.where(targets[..., :1] < 0, 0.5, targets[..., :1] / classes)
            panels.append(np.concatenate([shown, truth, predicted / classes], axis=1))
        with self.writer.as_default():
            tf.summary.image("input | truth | prediction", np.stack(panels), step=epoch + 1)
        self.writer.flush()


def _averaged_weights(model: keras.Model) -> list:
    """The weights `WeightAverage` averages: all, frozen ones too, but the moving
    statistics of batch normalisation (each worker's own until `SharedStatistics`)."""
    statistics = {id(variable) for variable in _moving_statistics(model)}
    return [weight for weight in model.weights if id(weight) not in statistics]


def _moving_statistics(model: keras.Model) -> list:
    """The moving means and variances of the model's batch normalisation layers."""
    return [
        variable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]


def _assign(targets: list, sources: list) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.assign(source)


def _floats(logs: dict) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items()}

"""The callbacks of a training run: checkpoints and logs, the time budget, image summaries."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet_keras.config import ModelRecord
from unet_keras.io.atomic import atomic_path
from unet_keras.saving import save_model
from unet_keras.training import distribute
from unet_keras.training.run_directory import RunDirectory

# The validation score that picks best.keras (lower is better).
MONITOR = "val_pixel_error"


class RunCheckpoint(keras.callbacks.Callback):
    """Saves last.keras, best.keras, log.csv and state.json after every epoch."""

    def __init__(
        self, run: RunDirectory, record: ModelRecord, state: dict, started: float
    ) -> None:
        super().__init__()
        self.run, self.record, self.state, self.started = run, record, state, started
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
        if improved:
            save_model(self.model, self.run.file("best.keras"), self.record)
            self.state.update(best=float(score), best_epoch=epoch + 1, best_logs=_floats(logs))
        self.rows.append({"epoch": str(epoch + 1), **{k: f"{v:.6g}" for k, v in logs.items()}})
        self._write_log()
        now = time.monotonic()
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


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once `seconds` of wall-clock time have passed."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__()
        self.seconds, self.deadline = seconds, None
        self.reached = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.seconds is not None:
            self.deadline = time.monotonic() + self.seconds

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.deadline is None:
            return
        # Workers stop after the same step, or the others wait for it forever.
        strategy = self.model.distribute_strategy
        if distribute.any_worker(strategy, time.monotonic() >= self.deadline):
            self.reached = True
            self.model.stop_training = True


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


def _floats(logs: dict) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items()}

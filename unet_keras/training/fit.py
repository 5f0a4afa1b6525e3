"""Training with `model.fit`: data preparation, the run directory, resume, time budget.

A run directory holds everything a run writes, each file atomically:

    config.json     the resolved settings (what the defaults and the data decided)
    last.keras      the model after the last completed epoch, with its optimizer state
    best.keras      the model with the best validation pixel error so far
    state.json      the last completed epoch, the best score, time spent (for resume)
    log.csv         one row of losses and metrics per epoch
    tensorboard/    TensorBoard scalars and, each epoch, input | truth | prediction images
    summary.json    the final record: best validation metrics, epochs, time, images/s

Running the same command again after a crash (even SIGKILL) continues from the last
completed epoch: `state.json` is written after `last.keras`, so it never points past a
model that exists. In a cluster (`--strategy multiworker`) the chief writes the run
directory, every other worker a copy in `worker-N/`, and all resume from the chief's.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from unet_keras.config import MaskConfig, ModelConfig, NormalizationConfig, TrainConfig
from unet_keras.geometry import check_input_size, output_size
from unet_keras.io.atomic import atomic_path
from unet_keras.io.masks import infer_mask_config
from unet_keras.io.normalization import fit_normalization
from unet_keras.io.readers import load_dataset
from unet_keras.io.sample import Sample
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.model import build_unet
from unet_keras.saving import load_model, model_metadata, save_model
from unet_keras.training import distribute, pipeline
from unet_keras.training.losses import CombinedLoss, DiceLoss, WeightedCrossEntropy
from unet_keras.training.metrics import Dice, IoU, PixelError

log = logging.getLogger("unet_keras.training.fit")

MONITOR = "val_pixel_error"
# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("epochs", "max_time")


@dataclasses.dataclass
class PreparedData:
    """What the data decided: examples, mask convention, normalisation, tile sizes."""

    training: list[pipeline.Example]
    validation: list[pipeline.Example]
    mask: MaskConfig
    normalization: NormalizationConfig
    model: ModelConfig
    tile: tuple[int, int]


def tile_sizes(model: ModelConfig, tile: int) -> tuple[int, int]:
    """(input, output) tile sizes; a tile the model cannot use raises naming ones it can."""
    try:
        check_input_size(tile, model.depth, model.padding)
    except ValueError as error:
        raise ValueError(f"--tile: {error}") from None
    return tile, output_size(tile, model.depth, model.padding)


def load_samples(config: TrainConfig) -> list[Sample]:
    """The labelled samples a run trains on: `config.data`, or the embedded synthetic set."""
    if config.data is None:
        log.info("no --data given: training on 24 synthetic EM sections of 512x512")
        return synthetic_em_images(24, (512, 512), seed=config.seed)
    return load_dataset(config.data, config.masks, require_masks=True)


def prepare_data(config: TrainConfig) -> PreparedData:
    """Loads the data, settles the mask convention and normalisation, splits by image."""
    tile = tile_sizes(config.model, config.tile)  # a bad tile fails before any loading
    samples = load_samples(config)
    mask = _mask_config(config, [s.mask for s in samples])
    held_out = config.validation
    if held_out >= len(samples):
        raise ValueError(
            f"--validation {held_out} leaves no training image of {len(samples)}; "
            f"use at most {len(samples) - 1}"
        )
    training, validation = pipeline.split_by_image(samples, held_out, seed=config.seed)
    # Normalisation is learnt from the training images only: validation stays unseen.
    normalization = fit_normalization([s.image for s in training], config.normalization)
    model = _model_config(config.model, mask, samples[0].image.shape[-1])
    prepare = dict(mask_config=mask, normalization=normalization, w0=config.w0, sigma=config.sigma)
    return PreparedData(
        training=pipeline.prepare_examples(training, **prepare),
        validation=pipeline.prepare_examples(validation, **prepare),
        mask=mask,
        normalization=normalization,
        model=model,
        tile=tile,
    )


def _mask_config(config: TrainConfig, masks: list[np.ndarray]) -> MaskConfig:
    """The mask convention: as given, or inferred from the masks (and logged)."""
    if config.class_values is not None:
        return MaskConfig(config.class_values, config.mask_threshold)
    if config.mask_threshold is not None:
        raise ValueError(
            "--mask-threshold needs --class-values: with lossy masks the values cannot be "
            "inferred (for ISBI-style masks use --class-values 0 255)"
        )
    mask = infer_mask_config(masks, foreground=config.foreground)
    if mask.num_classes == 2:
        log.info(
            "masks hold %s and %s: %s is the foreground (cells), %s the background "
            "(membrane): the majority value is taken as the cells, as in EM membrane masks; "
            "if that is wrong, pass --foreground bright|dark or --class-values",
            *mask.class_values,
            mask.class_values[1],
            mask.class_values[0],
        )
    else:
        log.info("masks hold %d classes with pixel values %s", mask.num_classes, mask.class_values)
    return mask


def _model_config(model: ModelConfig, mask: MaskConfig, channels: int) -> ModelConfig:
    """The model's shape with channels and classes taken from the data, checked."""
    if model.classes not in (1, mask.model_classes):
        raise ValueError(
            f"--classes {model.classes} does not match the masks: {mask.num_classes} classes "
            f"{mask.class_values} need {mask.model_classes} output channel(s)"
        )
    return dataclasses.replace(model, in_channels=int(channels), classes=mask.model_classes)


def _worker_run_dir(run_dir: str) -> RunDirectory:
    """Where this process writes: the chief the run directory, other workers a subfolder.

    Every worker keeps its own copy of the run's files (which also shows that the workers
    stay in step), but only the chief's are the run's.
    """
    if distribute.is_chief():
        return RunDirectory(run_dir)
    kind, index = distribute.worker_task()
    return RunDirectory(Path(run_dir) / f"{kind}-{index}")


def _check_workers_agree(strategy: tf.distribute.Strategy, settings: dict, epoch: int) -> None:
    """Refuses a cluster whose workers would run different steps (and wait forever)."""
    text = json.dumps(settings, sort_keys=True).encode()
    digest = float(int.from_bytes(hashlib.sha256(text).digest()[:6], "big"))  # exact in f64
    digests, epochs = zip(*distribute.all_workers(strategy, [digest, float(epoch)]), strict=True)
    if len(set(digests)) > 1:
        raise ValueError(
            "the workers were started with different settings: start every worker with the "
            "same command, TF_CONFIG's task being the only difference"
        )
    if len(set(epochs)) > 1:
        raise ValueError(
            f"the workers would resume after different epochs {[int(e) for e in epochs]}: "
            f"--run-dir must be on storage every worker reads (the chief's state.json and "
            f"last.keras are where all workers resume from)"
        )


def compiled_model(config: TrainConfig, model_config: ModelConfig, steps: int) -> keras.Model:
    """Builds and compiles the U-Net with the configured loss, optimiser and schedule."""
    model = build_unet(**model_config.to_dict())
    rate: Any = config.learning_rate
    if config.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=config.momentum)
    else:
        optimizer = keras.optimizers.Adam(rate)
    loss = {
        "cross_entropy": WeightedCrossEntropy(),
        "dice": DiceLoss(),
        "cross_entropy+dice": CombinedLoss(),
    }[config.loss]
    classes = model_config.classes
    metrics = [PixelError(), IoU(classes=classes), Dice(classes=classes)]
    model.compile(optimizer, loss=loss, metrics=metrics, jit_compile=config.jit_compile)
    return model


class RunDirectory:
    """The files of one run, each written atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        """Path of one file of the run."""
        return self.path / name

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """Writes a JSON file of the run atomically."""
        with atomic_path(self.file(name)) as temporary:
            temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Reads a JSON file of the run, or None when it does not exist."""
        path = self.file(name)
        return json.loads(path.read_text()) if path.exists() else None


class RunCheckpoint(keras.callbacks.Callback):
    """Saves last.keras, best.keras, log.csv and state.json after every epoch."""

    def __init__(self, run: RunDirectory, metadata: dict, state: dict, started: float) -> None:
        super().__init__()
        self.run, self.metadata, self.state, self.started = run, metadata, state, started
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
        save_model(self.model, self.run.file("last.keras"), self.metadata)
        improved = score is not None and (self.state["best"] is None or score < self.state["best"])
        if improved:
            save_model(self.model, self.run.file("best.keras"), self.metadata)
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
            truth = targets[..., :1] / classes
            panels.append(np.concatenate([shown, truth, predicted / classes], axis=1))
        with self.writer.as_default():
            tf.summary.image("input | truth | prediction", np.stack(panels), step=epoch + 1)
        self.writer.flush()


def _floats(logs: dict) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items()}


def _check_resumable(run: RunDirectory, resolved: dict) -> None:
    """Refuses to resume a run directory that holds a run with other settings."""
    saved = run.read_json("config.json")
    if saved is None:
        return
    differing = sorted(
        key
        for key in set(saved) | set(resolved)
        if key not in RESUMABLE_CHANGES and saved.get(key) != resolved.get(key)
    )
    if differing:
        raise ValueError(
            f"{run.path} holds a run with other settings ({', '.join(differing)}); resume it "
            f"with its own settings or choose a new --run-dir"
        )


def run(config: TrainConfig) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config`; returns the summary."""
    started = time.monotonic()
    # First: a multi-worker strategy must configure TensorFlow before anything runs.
    strategy = distribute.make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    log.info("strategy %s: %d replica(s)", config.strategy, replicas)
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} cannot be split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}"
        )
    keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config)
    resolved = {
        **config.to_dict(),
        "model": data.model.to_dict(),
        "class_values": list(data.mask.class_values),
    }
    run_dir = _worker_run_dir(config.run_dir)
    _check_resumable(run_dir, resolved)
    run_dir.write_json("config.json", resolved)
    log.info("settings: %s", json.dumps(resolved, sort_keys=True))
    metadata = model_metadata(data.mask, data.normalization, data.model, data.tile)

    # Every worker resumes from the chief's files.
    chief_run = RunDirectory(config.run_dir)
    state = chief_run.read_json("state.json") or {
        "epoch": 0,
        "best": None,
        "best_epoch": None,
        "best_logs": {},
        "seconds": 0.0,
        "images": 0,
        "batch_size": config.batch_size,
    }
    _check_workers_agree(strategy, resolved, state["epoch"])
    total_steps = config.epochs * config.steps_per_epoch
    with strategy.scope():
        if state["epoch"] > 0:
            log.info("resuming %s after epoch %d", chief_run.path, state["epoch"])
            model, _ = load_model(chief_run.file("last.keras"))
        else:
            model = compiled_model(config, data.model, total_steps)

    stopped_by_time_budget = False
    if state["epoch"] < config.epochs:
        tile_in, tile_out = data.tile

        def training_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
            # One input pipeline per worker, each drawing its own tiles; a resumed run
            # draws fresh ones: the seed moves on with the epoch.
            return pipeline.training_dataset(
                data.training, tile_in, tile_out,
                context.get_per_replica_batch_size(config.batch_size), config.augment,
                seed=config.seed + state["epoch"], stream=context.input_pipeline_id,
            )  # fmt: skip

        training = (
            training_input(tf.distribute.InputContext())
            if config.strategy == "default"
            else strategy.distribute_datasets_from_function(training_input)
        )
        validation = (
            pipeline.validation_dataset(data.validation, tile_in, tile_out, config.batch_size)
            if data.validation
            else None
        )
        budget = TimeBudget(config.max_time)
        callbacks = [
            RunCheckpoint(run_dir, metadata, state, started),
            budget,
            keras.callbacks.TensorBoard(str(run_dir.file("tensorboard")), write_graph=False),
        ]
        if validation is not None:
            first_image = pipeline.validation_dataset(data.validation[:1], tile_in, tile_out)
            tiles = [(x.numpy()[0], y.numpy()[0]) for x, y in first_image]
            shown = [tiles[0], tiles[len(tiles) // 2], tiles[-1]]
            callbacks.append(ValidationImages(run_dir.file("tensorboard"), shown))
        model.fit(
            training,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=config.steps_per_epoch,
            validation_data=validation,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=2,
        )
        stopped_by_time_budget = budget.reached
    if state["best"] is None and state["epoch"] > 0:
        # No validation images: the last model is the best one known.
        save_model(model, run_dir.file("best.keras"), metadata)
    summary = {
        "epochs": state["epoch"],
        "stopped_by_time_budget": stopped_by_time_budget,
        "best_epoch": state["best_epoch"],
        "best_validation": {k: v for k, v in state["best_logs"].items() if k.startswith("val_")},
        "wall_seconds": round(state["seconds"], 1),
        "training_images_per_second": round(state["images"] / max(state["seconds"], 1e-9), 3),
        "validation_images": [example.name for example in data.validation],
        "run_dir": str(run_dir.path),
    }
    run_dir.write_json("summary.json", summary)
    return summary

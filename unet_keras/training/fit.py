"""Training with `model.fit`: a run from its settings to `best.keras`, resumable.

`fit` is the training stage alone; `unet_keras.workflows.train` is the whole job that
`unet-keras train` runs (this, then the threshold chosen on the validation images).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import keras
import tensorflow as tf

from unet_keras.model import build_unet, dtype_policy
from unet_keras.record import ModelConfig
from unet_keras.saving import load_model, save_model
from unet_keras.training import distribute, pipeline
from unet_keras.training.batch_statistics import (
    STATISTICS_STEPS,
    refit_batch_statistics,
    statistics_batches,
)
from unet_keras.training.callbacks import (
    EpochProgress,
    Patience,
    RunCheckpoint,
    SharedStatistics,
    TrainingPlan,
    ValidationImages,
    WeightAverage,
    patience_spent,
)
from unet_keras.training.kernels import native_bf16, onednn_enabled
from unet_keras.training.losses import (
    CombinedLoss,
    CrossEntropySkeletonRecall,
    DiceLoss,
    WeightedCrossEntropy,
)
from unet_keras.training.metrics import Dice, IoU, PixelError
from unet_keras.training.prepare import PreparedData, prepare_data
from unet_keras.training.run_directory import RunDirectory
from unet_keras.training.training_settings import TrainConfig
from unet_keras.training.transfer import FreezeEncoder, initialize

log = logging.getLogger(__name__)

# Epochs without --epochs: as many as the time budget allows, else this many.
DEFAULT_EPOCHS = 40
UNBOUNDED = 1_000_000

LOSSES = {
    "cross_entropy": WeightedCrossEntropy,
    "dice": DiceLoss,
    "cross_entropy+dice": CombinedLoss,
    "cross_entropy+skeleton_recall": CrossEntropySkeletonRecall,
}


def compiled_model(config: TrainConfig, model_config: ModelConfig) -> keras.Model:
    """Builds and compiles the U-Net with the configured loss and optimiser.

    The learning rate is a variable that `TrainingPlan` sets every step.
    """
    model = build_unet(**model_config.to_dict())
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    else:
        optimizer = keras.optimizers.Adam(config.learning_rate)
    classes = model_config.classes
    metrics = [PixelError(), IoU(classes=classes), Dice(classes=classes)]
    model.compile(
        optimizer, loss=LOSSES[config.loss](), metrics=metrics, jit_compile=config.jit_compile
    )
    # Built now, not in the first step: a step that creates variables is traced twice.
    optimizer.build(model.trainable_variables)
    return model


def precision_policy(precision: str) -> str:
    """The Keras dtype policy for `--precision`: `auto` picks bf16 where the CPU has it
    and TensorFlow runs oneDNN."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    # Emulated bf16 (AVX2 only) ran 6x slower than float32; native bf16 1.5x faster, but
    # only through oneDNN: without it (TF_ENABLE_ONEDNN_OPTS=0) 57x slower.
    native = native_bf16() and onednn_enabled()
    return "mixed_bfloat16" if native else "float32"


def gradient_exchange(choice: str, policy: str) -> str:
    """The dtype for `--gradient-exchange`: auto is bfloat16 under mixed_bfloat16, else float32.

    Under mixed_bfloat16 each replica's gradients come from bfloat16 arithmetic, so summing
    them in bfloat16 adds one rounding and halves what the replicas send each other.
    """
    if choice != "auto":
        return choice
    return "bfloat16" if policy == "mixed_bfloat16" else "float32"


def fit(config: TrainConfig, data: PreparedData | None = None) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config`; returns its summary.

    `data` is `prepare_data(config)` when already at hand (it is made here otherwise).
    """
    started = time.monotonic()
    # First: a multi-worker strategy must configure TensorFlow before anything runs.
    strategy = _strategy(config)
    policy = precision_policy(config.precision)
    onednn = onednn_enabled()
    log.info(
        "precision %s (--precision %s); oneDNN kernels %s (--onednn %s)",
        policy,
        config.precision,
        "on" if onednn else "off",
        config.onednn,
    )
    # Not left to models built later in this process (a notebook's, a test's); the run's
    # models keep theirs in their files.
    with dtype_policy(policy):
        return _fit(config, data, strategy, policy, started)


def _fit(
    config: TrainConfig,
    data: PreparedData | None,
    strategy: tf.distribute.Strategy,
    policy: str,
    started: float,
) -> dict[str, Any]:
    """`fit` once Keras's global policy is `policy`."""
    keras.utils.set_random_seed(config.seed)
    data = data or prepare_data(config)
    record = data.record
    settings = {
        **config.to_dict(),
        "model": record.model.to_dict(),
        "class_values": list(record.mask.class_values),
    }
    run_dir = RunDirectory.for_this_worker(config.run_dir)
    run_dir.check_resumable(settings, defaults=TrainConfig().to_dict())
    log.info("settings: %s", json.dumps(settings, sort_keys=True))
    # Every worker resumes from the chief's files.
    chief_run = RunDirectory(config.run_dir)
    state = chief_run.state(config.batch_size)
    distribute.check_workers_agree(strategy, settings, state["epoch"])
    with strategy.scope():
        if state["epoch"] > 0:
            log.info("resuming %s after epoch %d", chief_run.path, state["epoch"])
            model, _ = load_model(chief_run.file("last.keras"), compile=True)
        else:
            model = compiled_model(config, record.model)
    if strategy.num_replicas_in_sync > 1:
        exchange = gradient_exchange(config.gradient_exchange, policy)
        distribute.sum_gradients_in(model.optimizer, exchange)
        log.info("gradients summed over the replicas in %s", exchange)
    if state["epoch"] == 0 and config.init_from:
        initialize(model, record.model, config.init_from, record.context_sections)
        log.info("weights from %s", config.init_from)
    # Only now: a run refused above leaves nothing that would refuse its corrected rerun.
    run_dir.write_json("config.json", settings)
    epochs = config.epochs or (UNBOUNDED if config.max_time else DEFAULT_EPOCHS)
    stopped_by_time_budget = bool(config.max_time) and state["seconds"] >= config.max_time
    stopped_by_patience = patience_spent(state, config.patience)
    if state["epoch"] < epochs and not (stopped_by_time_budget or stopped_by_patience):
        plan = TrainingPlan(
            config.learning_rate, config.schedule, config.warmup, seconds=config.max_time,
            steps=None if epochs == UNBOUNDED else epochs * config.steps_per_epoch,
            spent=state["seconds"], started=started,
        )  # fmt: skip
        # The plan first: the checkpoint logs the rate it sets. Patience after the
        # checkpoint: it reads the best epoch the checkpoint records.
        patience = Patience(state, config.patience)
        average = config.weight_average and WeightAverage(
            config.weight_average, chief_run, resumed=state["epoch"] > 0
        )
        callbacks = [
            plan,
            RunCheckpoint(run_dir, record, state, started, average or None),
            patience,
            EpochProgress(plan),
        ]
        if average:
            callbacks.insert(0, average)
        if config.freeze_encoder:
            callbacks.insert(0, FreezeEncoder(config.freeze_encoder))
        if config.strategy == "multiworker":
            callbacks.insert(0, SharedStatistics())  # before the checkpoint saves the model
        callbacks += _logging_callbacks(run_dir, data)
        model.fit(
            _training_input(config, data, strategy, state["epoch"]),
            epochs=epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=config.steps_per_epoch,
            validation_data=_validation_input(config, data),
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=2,
        )
        stopped_by_time_budget = plan.reached
        stopped_by_patience = patience.reached
    keeps_last = config.keep == "last" or state["best"] is None
    if keeps_last and state["epoch"] > 0:
        # The end of the schedule, averaged: on ISBI it scored a higher V^Rand than the
        # epoch of lowest validation pixel error in every run measured (docs/training.md).
        if config.weight_average:
            model.load_weights(chief_run.file(WeightAverage.FILE))
            # No more batches than training took: a short run's average is of few steps.
            steps = min(STATISTICS_STEPS, state["epoch"] * config.steps_per_epoch)
            if refit_batch_statistics(model, statistics_batches(config, data), steps):
                log.info("batch normalisation statistics of %d batches for the average", steps)
        save_model(model, run_dir.file("best.keras"), record)
    summary = _summary(state, data, run_dir, stopped_by_time_budget)
    summary["kept_epoch"] = state["epoch"] if keeps_last else state["best_epoch"]
    summary["stopped_by_patience"] = stopped_by_patience
    summary["precision"] = policy
    summary["onednn"] = onednn_enabled()
    if config.max_time:
        # Data preparation and every session of a resumed run count.
        summary["budget_used"] = round(state["seconds"] / config.max_time, 4)
    run_dir.write_json("summary.json", summary)
    return summary


def _strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The distribution strategy, checked against the batch size."""
    strategy = distribute.make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    log.info("strategy %s: %d replica(s)", config.strategy, replicas)
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} cannot be split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}"
        )
    return strategy


def _training_input(
    config: TrainConfig, data: PreparedData, strategy: tf.distribute.Strategy, epoch: int
) -> tf.data.Dataset:
    """Training batches: one input pipeline per worker, each drawing its own tiles."""
    tile = data.record.tile

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # A resumed run draws fresh tiles: the seed moves on with the epoch.
        batch_size = context.get_per_replica_batch_size(config.batch_size)
        return pipeline.training_dataset(
            data.training, tile.input, tile.output, batch_size, config.augment,
            seed=config.seed + epoch, stream=context.input_pipeline_id,
        )  # fmt: skip

    if config.strategy == "default":
        return per_worker(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(per_worker)


def _validation_input(config: TrainConfig, data: PreparedData) -> tf.data.Dataset | None:
    """The validation images as tiles, or None without validation images."""
    if not data.validation:
        return None
    tile = data.record.tile
    return pipeline.validation_dataset(data.validation, tile.input, tile.output, config.batch_size)


def _logging_callbacks(
    run_dir: RunDirectory, data: PreparedData
) -> list[keras.callbacks.Callback]:
    """TensorBoard curves and, with validation images, three of their tiles each epoch."""
    log_dir = run_dir.file("tensorboard")
    callbacks = [keras.callbacks.TensorBoard(str(log_dir), write_graph=False)]
    if data.validation:
        tile = data.record.tile
        first = pipeline.validation_dataset(data.validation[:1], tile.input, tile.output)
        tiles = [(x.numpy()[0], y.numpy()[0]) for x, y in first]
        callbacks.append(ValidationImages(log_dir, [tiles[0], tiles[len(tiles) // 2], tiles[-1]]))
    return callbacks


def _summary(
    state: dict[str, Any], data: PreparedData, run_dir: RunDirectory, stopped_by_time_budget: bool
) -> dict[str, Any]:
    """The run's final record, for summary.json."""
    return {
        "epochs": state["epoch"],
        "stopped_by_time_budget": stopped_by_time_budget,
        "best_epoch": state["best_epoch"],
        "best_validation": {k: v for k, v in state["best_logs"].items() if k.startswith("val_")},
        "wall_seconds": round(state["seconds"], 1),
        "training_images_per_second": round(state["images"] / max(state["seconds"], 1e-9), 3),
        "validation_images": [example.name for example in data.validation],
        "run_dir": str(run_dir.path),
    }

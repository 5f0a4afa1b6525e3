"""Starting a run from trained weights (`--init-from`), and keeping the encoder fixed at first.

The source is a `.keras` file, a run directory, an exported SavedModel version or the name of
a shipped model. Its weights are matched to the new network by layer path; a source whose
network differs in shape fails before training, naming the settings that differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from unet_keras.pretrained_models import resolve
from unet_keras.record import ModelConfig, ModelRecord
from unet_keras.saving import load_model, read_record


def source_weights(source: str) -> tuple[dict[str, np.ndarray], ModelRecord]:
    """The weights of `source` by layer path (`down1_conv1/kernel`), and its record."""
    path = resolve(source)
    if (path / "saved_model.pb").is_file():
        return _exported_weights(path)
    model, record = load_model(path)
    return {
        variable.path: keras.ops.convert_to_numpy(variable) for variable in model.weights
    }, record


def _exported_weights(path: Path) -> tuple[dict[str, np.ndarray], ModelRecord]:
    """The network's weights inside an export (`ServingModule.weights`), by layer path."""
    import tensorflow as tf

    record = read_record(path)
    loaded = tf.saved_model.load(str(path))
    weights = getattr(loaded, "weights", None)
    if weights is not None:
        return {name: variable.numpy() for name, variable in weights.items()}, record
    # Exports before the weights were tracked alone held the Keras model as `model`.
    network = getattr(loaded, "model", None)
    if network is None:
        raise ValueError(f"--init-from {path}: not a unet-keras export (no weights inside)")
    # Restored Keras layers are plain trackables: their variables keep the layer paths.
    descendants = tf.train.TrackableView(network).descendants()
    weights = {
        variable.name.split(":")[0]: variable.numpy()
        for variable in descendants
        if isinstance(variable, tf.Variable)
    }
    return weights, record


def initialize(
    model: keras.Model, config: ModelConfig, source: str, context_sections: int = 0
) -> ModelRecord:
    """Sets the weights of `model` (built from `config`, seeing `context_sections` sections
    on each side) from `source`; returns its record.

    Raises ValueError, before any weight changes, when the two networks differ in shape or
    in what their input channels hold.
    """
    weights, record = source_weights(source)
    if record.members > 1:
        raise ValueError(
            f"--init-from {source}: an ensemble of {record.members} models, which training "
            "cannot go on from; start from one of the models it was made from"
        )
    there = _channels(record.model.in_channels, record.context_sections)
    here = _channels(config.in_channels, context_sections)
    # Checked apart from the shapes: 3 channels of colour and 3 sections fit but differ.
    if there != here:
        raise ValueError(
            f"--init-from {source}: its network takes {there} there, {here} here; train "
            "with its --context-sections on data of its channels"
        )
    targets = {variable.path: variable for variable in model.weights}
    fits = weights.keys() == targets.keys() and all(
        tuple(weights[name].shape) == tuple(variable.shape) for name, variable in targets.items()
    )
    if not fits:
        differing = [
            f"--{field.name.replace('_', '-')} {getattr(record.model, field.name)} there, "
            f"{getattr(config, field.name)} here"
            for field in dataclasses.fields(ModelConfig)
            if getattr(record.model, field.name) != getattr(config, field.name)
        ]
        raise ValueError(
            f"--init-from {source}: its network differs from this run's in shape "
            f"({'; '.join(differing) or 'its weights differ'}); train with its settings"
        )
    for name, variable in targets.items():
        variable.assign(weights[name].astype(variable.dtype))
    return record


class FreezeEncoder(keras.callbacks.Callback):
    """Keeps the contracting path (`down*`, `bottom*` layers) fixed for the first `epochs`."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        frozen = epoch < self.epochs
        encoder = [layer for layer in self.model.layers if _in_encoder(layer.name)]
        if all(layer.trainable != frozen for layer in encoder):
            return
        # The optimizer keeps state for every weight, frozen or not: build it with all first.
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        for layer in encoder:
            layer.trainable = not frozen
        # The compiled step captured the trainable weights: trace it again.
        self.model.make_train_function(force=True)


def _channels(in_channels: int, context_sections: int) -> str:
    """What a network's input channels hold, for messages."""
    sections = 2 * context_sections + 1
    return (
        f"{in_channels} input channel(s), {sections} section(s) of {in_channels // sections} "
        f"(--context-sections {context_sections})"
    )


def _in_encoder(name: str) -> bool:
    return name.startswith(("down", "bottom"))


def encoder_frozen(model: keras.Model) -> bool:
    """Whether every encoder layer of `model` is fixed."""
    return all(not layer.trainable for layer in model.layers if _in_encoder(layer.name))

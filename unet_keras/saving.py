"""Model files that carry their own record, and loading models back from files or exports.

A model is saved as a standard `.keras` archive with one extra entry, `unet_keras.json`:
its `ModelRecord` (mask convention, intensity normalisation, shape, training tile, chosen
threshold). Prediction and export read the record from the file, so they always apply
exactly the training preprocessing, and `keras.models.load_model` still opens the file as
it is. A model is loaded without its training configuration unless asked: compiling needs
the losses and metrics of `unet_keras.training` imported (they register themselves).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

import unet_keras.model  # noqa: F401  (registers the layers a model file needs)
from unet_keras import contract
from unet_keras.io.atomic import atomic_path
from unet_keras.pretrained_models import SHIPPED, resolve
from unet_keras.record import ModelRecord, parse_record


def save_model(model: keras.Model, path: str | os.PathLike, record: ModelRecord) -> None:
    """Saves `model` with its `record` to a `.keras` file, atomically (all or nothing)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: model files end in .keras")
    with atomic_path(path) as temporary:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(contract.RECORD_FILE, _record_text(record))


def update_record(path: str | os.PathLike, record: ModelRecord) -> None:
    """Replaces a model file's record, atomically; the weights stay as they are."""
    path = model_file(path)
    with (
        atomic_path(path) as temporary,
        zipfile.ZipFile(path) as source,
        zipfile.ZipFile(temporary, "w") as target,
    ):
        for entry in source.infolist():
            if entry.filename != contract.RECORD_FILE:
                target.writestr(entry, source.read(entry.filename))
        target.writestr(contract.RECORD_FILE, _record_text(record))


def read_record(path: str | os.PathLike) -> ModelRecord:
    """Reads the record of a model file saved by `save_model`, a run directory's, or an
    exported SavedModel version's."""
    path = resolve(path)
    if (path / "saved_model.pb").is_file():
        asset = path / "assets" / contract.RECORD_FILE
        if not asset.is_file():
            raise ValueError(f"{path}: a SavedModel without a unet-keras record ({asset.name})")
        return parse_record(asset.read_bytes(), asset)
    path = model_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(contract.RECORD_FILE)
    except KeyError:
        raise ValueError(
            f"{path}: a Keras model without a unet-keras record ({contract.RECORD_FILE}); save "
            "models with unet_keras.saving.save_model so they carry their preprocessing"
        ) from None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not a readable .keras file ({error})") from None
    return parse_record(text, path)


def load_model(path: str | os.PathLike, compile: bool = False) -> tuple[keras.Model, ModelRecord]:
    """Loads a model file, or the model a run directory kept, with its record.

    Uncompiled (for prediction and export), a model trained in mixed precision comes back
    in float32: its weights are float32 already, and every way of running it (predict,
    export, serving) then computes the same probabilities, however its tiles are batched.
    """
    path = model_file(path)
    record = read_record(path)
    model = keras.models.load_model(path, compile=compile)
    if compile or all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model, record
    from unet_keras.model import build_unet, dtype_policy

    with dtype_policy("float32"):
        exact = build_unet(**record.model.to_dict())
    exact.set_weights(model.get_weights())
    return exact, record


def pretrained(name: str) -> tuple[keras.Model, ModelRecord]:
    """Loads the shipped model `name` (`unet_keras.pretrained_models`), as `load_model` does."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped model {name!r}; shipped: {', '.join(sorted(SHIPPED))}")
    return load_model(resolve(name))


def load_network(path: str | os.PathLike) -> tuple[Callable[[Any], Any], ModelRecord]:
    """Loads the network from a `.keras` file, run directory, exported SavedModel version or
    shipped model's name.

    Returns a function from normalised float32 tiles [N, h, w, C] to probabilities, and
    the model's record. An exported version (as `unet-keras export` writes it) provides
    them through its `tiles` signature and its record asset.
    """
    path = resolve(path)
    if not (path / "saved_model.pb").is_file():
        model, record = load_model(path, compile=False)
        return (lambda tiles: model(tiles, training=False)), record
    import tensorflow as tf

    record = read_record(path)
    loaded = tf.saved_model.load(str(path))
    if contract.TILES not in loaded.signatures:
        raise ValueError(f"{path}: a SavedModel without the {contract.TILES!r} signature")

    def network(tiles: Any) -> Any:
        # Through `loaded`, which owns the variables the signature reads: keeps it alive.
        outputs = loaded.signatures[contract.TILES](**{contract.TILES_INPUT: tiles})
        return outputs[contract.PROBABILITIES]

    return network, record


def model_file(path: str | os.PathLike) -> Path:
    """Resolves a run directory to its `best.keras`, a shipped model's name to its file;
    checks the file exists."""
    path = resolve(path)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a .keras file or run dir)")
    return path


def _record_text(record: ModelRecord) -> str:
    return json.dumps(record.to_dict(), indent=2, sort_keys=True)

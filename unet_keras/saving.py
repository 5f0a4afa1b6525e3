"""Model files that carry their own preprocessing, and loading them back.

A model is saved as a standard `.keras` archive with one extra entry, `unet_keras.json`:
the mask convention, the intensity normalisation and the tile geometry it was trained
with. Prediction and export read them from the file, so they always apply exactly the
training preprocessing, and `keras.models.load_model` still opens the file as it is.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

# Imported for their registered Keras objects, which loading a model file needs.
from unet_keras.config import MaskConfig, ModelConfig, NormalizationConfig
from unet_keras.io.atomic import atomic_path

METADATA_ENTRY = "unet_keras.json"


def model_metadata(
    mask: MaskConfig,
    normalization: NormalizationConfig,
    model: ModelConfig,
    tile: tuple[int, int],
) -> dict[str, Any]:
    """The preprocessing record stored with a model: masks, normalisation, shape, tiles."""
    return {
        "mask": mask.to_dict(),
        "normalization": normalization.to_dict(),
        "model": model.to_dict(),
        "tile": {"input": int(tile[0]), "output": int(tile[1])},
    }


def save_model(model: keras.Model, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Saves `model` with `metadata` to a `.keras` file, atomically (all or nothing)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: model files end in .keras")
    with atomic_path(path) as temporary:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2, sort_keys=True))


def update_metadata(path: str | os.PathLike, changes: dict[str, Any]) -> dict[str, Any]:
    """Merges `changes` into a model file's preprocessing record, atomically; returns it."""
    path = _model_file(path)
    metadata = {**read_metadata(path), **changes}
    with (
        atomic_path(path) as temporary,
        zipfile.ZipFile(path) as source,
        zipfile.ZipFile(temporary, "w") as target,
    ):
        for entry in source.infolist():
            if entry.filename != METADATA_ENTRY:
                target.writestr(entry, source.read(entry.filename))
        target.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2, sort_keys=True))
    return metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Reads the preprocessing record of a model file saved by `save_model`."""
    path = _model_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(METADATA_ENTRY))
    except KeyError:
        raise ValueError(
            f"{path}: a Keras model without unet-keras metadata ({METADATA_ENTRY}); save "
            "models with unet_keras.saving.save_model so they carry their preprocessing"
        ) from None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not a readable .keras file ({error})") from None


def load_model(path: str | os.PathLike, compile: bool = True) -> tuple[keras.Model, dict]:
    """Loads a model file, or a run directory's best model, with its preprocessing record."""
    path = _model_file(path)
    metadata = read_metadata(path)
    return keras.models.load_model(path, compile=compile), metadata


def load_network(path: str | os.PathLike) -> tuple[Callable, dict[str, Any]]:
    """Loads the network from a `.keras` file, run directory or exported SavedModel version.

    Returns a function from normalised float32 tiles [N, h, w, C] to probabilities, and
    the model's preprocessing record. A SavedModel version directory (as `unet-keras
    export` writes) provides it through its `tiles` signature and its metadata asset.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        import tensorflow as tf

        asset = path / "assets" / METADATA_ENTRY
        if not asset.is_file():
            raise ValueError(f"{path}: a SavedModel without unet-keras metadata ({asset.name})")
        loaded = tf.saved_model.load(str(path))
        if "tiles" not in loaded.signatures:
            raise ValueError(f"{path}: a SavedModel without the 'tiles' signature")

        def network(tiles: Any) -> Any:
            # Refers to `loaded`, which owns the variables the signature reads.
            return loaded.signatures["tiles"](tiles=tiles)["probabilities"]

        return network, json.loads(asset.read_text())
    model, metadata = load_model(path, compile=False)
    return (lambda tiles: model(tiles, training=False)), metadata


def _model_file(path: str | os.PathLike) -> Path:
    """Resolves a run directory to its `best.keras`; checks the file exists."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a .keras file or run dir)")
    return path

"""Several trained models as one: the mean of their probability maps.

Runs of one recipe that differ in their seed differ most where membranes are faint; the
mean of their maps, as nnU-Net averages its five folds, scored a lower pixel error and a
higher V^Info on the ISBI 2012 sections held out than its members on average
(docs/benchmarks.md). The ensemble is one Keras model, its members side by side behind
one input and an `Average` of their outputs, with one record: prediction, evaluation, the
SavedModel, ONNX and BioImage.IO exports and the server take it as they take one U-Net.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from unet_keras.record import SYMMETRIES, Calibration, ModelRecord
from unet_keras.saving import load_model, model_file, save_model

# What every member must share: what its input and output pixels mean, and its network
# (dropout aside, which inference leaves out), so that the record's `model` is each one's.
SHARED = ("mask", "context_sections")
SHARED_NETWORK = ("in_channels", "classes", "depth", "filters", "padding", "batch_norm")


def build_ensemble(
    members: Sequence[tuple[keras.Model, ModelRecord]],
    names: Sequence[str],
    threshold: float | None = None,
) -> tuple[keras.Model, ModelRecord]:
    """One model whose output is the mean of the members' outputs, and its record.

    `names` name the members in errors. The ensemble takes images normalised as the first
    member's were; each other member gets its own normalisation back from that through a
    `Rescaling` layer. Its threshold is `threshold`, else the mean of the members' chosen
    thresholds; its test-time symmetries are those every member was trained with.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
    records = [record for _, record in members]
    first = records[0]
    for name, record in zip(names[1:], records[1:], strict=True):
        _check_compatible(names[0], first, name, record)
    image = keras.Input(shape=(None, None, first.model.in_channels), name="image")
    outputs = []
    for index, (model, record) in enumerate(members):
        if record.members > 1:
            raise ValueError(
                f"{names[index]}: an ensemble already; list the models it was made from"
            )
        x = image
        if record.normalization != first.normalization:
            x = _renormalization(first, record, f"member{index}_normalization")(x)
        member = keras.Model(model.input, model.output, name=f"member{index}")
        outputs.append(member(x))
    ensemble = keras.Model(image, keras.layers.Average(name="mean")(outputs), name="ensemble")
    return ensemble, dataclasses.replace(
        first,
        threshold=_threshold(records, threshold),
        symmetries=_common_symmetries(records),
        members=len(members),
    )


def ensemble_members(model: keras.Model) -> list[tuple[keras.layers.Layer | None, keras.Model]]:
    """An ensemble's members in order, each after the layer that renormalises its input
    (None where the first member's normalisation is its own)."""
    layers = {layer.name: layer for layer in model.layers}
    count = sum(isinstance(layer, keras.Model) for layer in model.layers)
    return [(layers.get(f"member{i}_normalization"), layers[f"member{i}"]) for i in range(count)]


def make_ensemble(
    models: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    threshold: float | None = None,
) -> ModelRecord:
    """Writes the ensemble of `models` (run directories, `.keras` files or shipped models'
    names) to the `.keras` file `output`, atomically; returns its record."""
    output = Path(output)
    if output.suffix != ".keras":
        raise ValueError(f"--output {output}: the ensemble is a model file, NAME.keras")
    sources = [model_file(path) for path in models]
    for index, source in enumerate(sources):
        if any(source.samefile(earlier) for earlier in sources[:index]):
            raise ValueError(f"--models: {models[index]} is listed twice")
    if output.exists() and any(output.samefile(source) for source in sources):
        raise ValueError(f"--output {output}: is one of the models; name a new file")
    # float32 as `load_model` gives them: an ensemble of mixed-precision members would
    # otherwise compute, and be saved, in their policy.
    members = [load_model(source) for source in sources]
    ensemble, record = build_ensemble(members, [str(path) for path in models], threshold)
    save_model(ensemble, output, record)
    return record


def _check_compatible(first_name: str, first: ModelRecord, name: str, record: ModelRecord) -> None:
    """Raises a ValueError naming both models and the setting where they differ."""
    pairs = [(f, record, first) for f in SHARED]
    pairs += [(f, record.model, first.model) for f in SHARED_NETWORK]
    pairs += [(f, record.normalization, first.normalization) for f in ("method", "input_dtype")]
    differing = [
        f"{field} {getattr(mine, field)} against {getattr(theirs, field)}"
        for field, mine, theirs in pairs
        if getattr(mine, field) != getattr(theirs, field)
    ]
    if differing:
        raise ValueError(
            f"{name} cannot join an ensemble with {first_name}: {'; '.join(differing)}"
        )


def _renormalization(first: ModelRecord, member: ModelRecord, name: str) -> keras.layers.Layer:
    """Maps pixels normalised as `first`'s were to the normalisation of `member`."""
    # (raw - o1) / s1 = x  =>  (raw - o2) / s2 = x * s1 / s2 + (o1 - o2) / s2
    o1, s1, o2, s2 = (
        np.asarray(values, np.float64)
        for values in (
            first.normalization.offset,
            first.normalization.scale,
            member.normalization.offset,
            member.normalization.scale,
        )
    )
    return keras.layers.Rescaling(
        scale=(s1 / s2).tolist(), offset=((o1 - o2) / s2).tolist(), name=name, dtype="float32"
    )


def _threshold(records: Sequence[ModelRecord], threshold: float | None) -> Calibration:
    """The ensemble's threshold: `threshold` when given, else the members' mean."""
    if threshold is not None:
        return Calibration(threshold, "set when the ensemble was made", (), {}, {})
    mean = float(np.mean([record.threshold_value for record in records]))
    return Calibration(round(mean, 4), "the mean of the members' thresholds", (), {}, {})


def _common_symmetries(records: Sequence[ModelRecord]) -> str:
    """The `symmetries` every member was trained with."""
    flips = all(SYMMETRIES[record.symmetries][0] for record in records)
    rotations = all(SYMMETRIES[record.symmetries][1] for record in records)
    return next(name for name, value in SYMMETRIES.items() if value == (flips, rotations))

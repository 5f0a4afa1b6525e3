"""Mask pixel values <-> class indices, following a `MaskConfig`, and inferring that config."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from unet_keras.io.sample import DataError
from unet_keras.record import MaskConfig

FOREGROUND_CHOICES = ("auto", "bright", "dark")

# The class index of an unlabelled pixel (`MaskConfig.ignore_value`): no class at all.
IGNORED = -1


def mask_to_labels(mask: np.ndarray, config: MaskConfig, source: str = "mask") -> np.ndarray:
    """Maps raw mask values to int32 class indices; values that fit no class raise DataError.

    Pixel value `config.class_values[k]` becomes class k. With `config.threshold` (binary
    masks), values at or above the threshold become the class of the larger value and the
    rest the class of the smaller, so lossy (JPEG, resampled) masks are accepted. Pixels
    of `config.ignore_value` become `IGNORED`. `source` names the mask in errors.
    """
    values = config.class_values
    if config.threshold is not None:
        low, high = sorted(values)
        labels = np.where(mask >= config.threshold, values.index(high), values.index(low))
        labels = labels.astype(np.int32)
    else:
        unknown = np.iinfo(np.int32).min
        labels = np.full(mask.shape, unknown, np.int32)
        for index, value in enumerate(values):
            labels[mask == value] = index
        known = labels != unknown
        if config.ignore_value is not None:
            known |= mask == config.ignore_value
        if not known.all():
            raise DataError(_unexpected_values_message(mask[~known], config, source))
    if config.ignore_value is not None:
        labels[mask == config.ignore_value] = IGNORED
    return labels


def labels_to_mask(
    labels: np.ndarray, config: MaskConfig, dtype: npt.DTypeLike = np.uint8
) -> np.ndarray:
    """Maps class indices back to mask pixel values, in the training masks' convention."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= config.num_classes):
        raise ValueError(
            f"labels hold class indices {labels.min()}..{labels.max()}, outside "
            f"0..{config.num_classes - 1} of class_values {config.class_values}"
        )
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if min(config.class_values) < info.min or max(config.class_values) > info.max:
            raise ValueError(
                f"class_values {config.class_values} do not fit dtype {dtype}; "
                "pass a wider dtype such as uint16"
            )
    return np.asarray(config.class_values, dtype)[labels]


def infer_mask_config(
    masks: Iterable[np.ndarray],
    foreground: str = "auto",
    max_classes: int = 16,
    ignore_value: int | None = None,
) -> MaskConfig:
    """Proposes the MaskConfig of a set of masks from the pixel values they hold.

    The class values are the distinct values other than `ignore_value`, sorted. For two
    values (binary), `foreground` picks which is class 1, the objects: "bright" the larger
    value, "dark" the smaller, and "auto" the majority value. The "auto" heuristic fits EM
    membrane masks (ISBI): membranes are thin, so they are the minority class and the cells
    they enclose the majority, whether the cells are drawn white (ISBI: (0, 255)) or black
    ((255, 0)). Masks of sparse objects on
    a large background (nuclei) need "bright" or "dark" instead.
    """
    if foreground not in FOREGROUND_CHOICES:
        raise ValueError(f"foreground must be one of {FOREGROUND_CHOICES}, got {foreground!r}")
    counts: dict[int, int] = {}
    for mask in masks:
        values, value_counts = np.unique(mask, return_counts=True)
        for value, count in zip(values.tolist(), value_counts.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + count
    counts.pop(ignore_value, None)
    if not all(float(value).is_integer() for value in counts):
        raise DataError(f"masks must hold whole-number class values, got {sorted(counts)[:10]}")
    if len(counts) < 2:
        raise DataError(
            f"masks hold {len(counts)} distinct value(s) {sorted(counts)}; at least two "
            "classes are needed"
        )
    values = tuple(sorted(counts))
    if len(values) > max_classes:
        raise DataError(
            f"masks hold {len(values)} distinct values ({values[0]}..{values[-1]}), more than "
            f"max_classes={max_classes}; if they are lossy binary masks (JPEG, resampled), use "
            f"MaskConfig(class_values=({values[0]}, {values[-1]}), "
            f"threshold={(values[0] + values[-1]) / 2})"
        )
    if len(values) > 2:
        if foreground != "auto":
            raise ValueError(f"foreground={foreground!r} applies to binary masks; got {values}")
        return MaskConfig(values, ignore_value=ignore_value)
    low, high = values
    if foreground == "dark" or (foreground == "auto" and counts[low] > counts[high]):
        return MaskConfig((high, low), ignore_value=ignore_value)
    return MaskConfig((low, high), ignore_value=ignore_value)


def _unexpected_values_message(unexpected: np.ndarray, config: MaskConfig, source: str) -> str:
    """Explains which values of a mask fit no class, and the likely fix."""
    values, counts = np.unique(unexpected, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:5]
    listed = ", ".join(f"{values[i]} ({counts[i]} px)" for i in order)
    more = f" and {len(values) - len(order)} more values" if len(values) > len(order) else ""
    message = (
        f"{source}: mask values {listed}{more} fit none of the class_values {config.class_values}"
    )
    low, high = min(config.class_values), max(config.class_values)
    if config.num_classes == 2 and values.min() > low and values.max() < high:
        return (
            f"{message}; it looks like a lossy binary mask (JPEG or resampled): set "
            f"MaskConfig(class_values={config.class_values}, threshold={(low + high) / 2})"
        )
    return f"{message}; set class_values to the mask's values (infer_mask_config proposes them)"

"""The model record: what a model carries besides its weights, in its `.keras` file and in
every export (its `metadata` signature and asset), and what the client reads from a server.

The mask convention and normalisation of the training data, the network's shape, its
training tile, the threshold chosen after training and the symmetries it was trained
with. Training writes it; inference, export, the server and the client read it and never
re-derive it, so it must stay readable by each of them. TF-free.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

from unet_keras.settings import Settings, at_least, setting


@dataclasses.dataclass(frozen=True)
class MaskConfig(Settings):
    """How mask pixel values map to classes, and back when masks are written.

    `class_values[k]` is the pixel value of class k. Two values make a binary task whose
    class 1 is the foreground ("cells": the objects the border weight map separates):
    ISBI 2012 masks are `(0, 255)` (membrane black, cell interior white); data sets that
    draw membranes white use `(255, 0)`. `threshold` (binary only) accepts lossy masks:
    values at or above it count as the larger class value. `ignore_value` marks pixels that
    carry no label (sparse annotations): no loss, metric, calibration or score counts them.
    """

    class_values: tuple[int, ...] = setting((0, 255), help="mask pixel value of each class")
    threshold: float | None = setting(
        None, help="binary masks: values at or above it are the larger class value"
    )
    ignore_value: int | None = setting(
        None, help="mask pixel value of unlabelled pixels (sparse annotations)"
    )

    def check(self) -> None:
        values = self.class_values
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(
                f"mask class_values must list at least two distinct pixel values, got {values!r}"
            )
        if self.ignore_value is not None and self.ignore_value in values:
            raise ValueError(
                f"mask ignore_value {self.ignore_value} is also a class value {values!r}: "
                "unlabelled pixels need a value of their own"
            )
        if self.threshold is not None and len(values) != 2:
            raise ValueError(
                f"mask threshold applies to binary masks only; class_values {values!r} has "
                f"{len(values)} classes"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes the masks hold."""
        return len(self.class_values)

    @property
    def model_classes(self) -> int:
        """Output channels of the model: 1 (sigmoid) for binary masks, else one per class."""
        return 1 if self.num_classes == 2 else self.num_classes


@dataclasses.dataclass(frozen=True)
class NormalizationConfig(Settings):
    """Intensity normalisation learnt from the training images: `(x - offset) / scale`.

    Stored with the model so prediction and export apply exactly the training
    preprocessing. `offset` and `scale` hold one value per channel.
    """

    method: Literal["standardize", "unit_range"] = setting(
        "standardize", help="standardize (mean/std) or unit_range (divide by the dtype maximum)"
    )
    offset: tuple[float, ...] = setting((0.0,), help="per channel, subtracted first")
    scale: tuple[float, ...] = setting((1.0,), help="per channel, divided by after")
    input_dtype: str = setting("uint8", help="dtype of the images it was fitted on")

    def check(self) -> None:
        if len(self.offset) != len(self.scale):
            raise ValueError(
                f"normalization offset {self.offset} and scale {self.scale} need one value "
                "per channel"
            )
        if any(s <= 0 for s in self.scale):
            raise ValueError(f"normalization scale must be positive, got {self.scale}")

    @property
    def channels(self) -> int:
        """Number of image channels the normalisation was fitted on."""
        return len(self.offset)


# What a record's `symmetries` name means: (left-right flips, quarter turns).
SYMMETRIES = {
    "all": (True, True),
    "flips": (True, False),
    "rotations": (False, True),
    "none": (False, False),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """The U-Net's shape: the keyword arguments of `unet_keras.model.build_unet`."""

    in_channels: int = setting(1, help="image channels (taken from the data)", cli=False)
    classes: int = setting(
        1, help="output channels; 1 (sigmoid) for binary masks; must match the masks"
    )
    depth: int = setting(4, help="poolings in the U-Net")
    filters: int = setting(64, help="filters of the first level, doubled at every level")
    padding: Literal["valid", "same"] = setting(
        "valid", help="valid: the paper's unpadded convolutions; same: output size = input size"
    )
    batch_norm: bool = setting(False, help="batch normalisation after every convolution")
    dropout: float = setting(
        0.5, help="dropout rate at the end of the contracting path (0 disables it)"
    )

    def check(self) -> None:
        at_least(self, 1, "in_channels", "classes", "depth", "filters")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TileSizes(Settings):
    """A model's training tile: input and output side lengths in pixels."""

    input: int = setting(help="input tile side")
    output: int = setting(help="output tile side (smaller with valid padding)")


def check_threshold(threshold: float | None) -> None:
    """Raises a ValueError naming --threshold unless it is None or a probability in (0, 1)."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {threshold}")


@dataclasses.dataclass(frozen=True)
class Calibration(Settings):
    """The threshold chosen on a run's validation images after training."""

    value: float = setting(help="probability at or above which a pixel is foreground")
    chosen_by: str = setting(help="the score it was chosen by")
    images: tuple[str, ...] = setting(help="the validation images it was chosen on")
    scores: dict[str, float] = setting(help="their mean scores at this threshold")
    scores_at_half: dict[str, float] = setting(help="their mean scores at 0.5")


@dataclasses.dataclass(frozen=True)
class ModelRecord(Settings):
    """What a model carries besides its weights, in its `.keras` file and in exports.

    The mask convention and normalisation of the training data, the model's shape, its
    training tile and, once calibrated, its threshold. Prediction, export and the client
    read them from here, never re-derive them.
    """

    mask: MaskConfig = setting(help="the mask convention")
    normalization: NormalizationConfig = setting(help="the intensity normalisation")
    model: ModelConfig = setting(help="the network's shape")
    tile: TileSizes = setting(help="the training tile")
    threshold: Calibration | None = setting(None, help="chosen after training, if it was")
    symmetries: Literal["all", "flips", "rotations", "none"] = setting(
        "all",
        help="the flips (left-right) and quarter turns training drew from: test-time "
        "augmentation averages these alone (records from before this field: all 8)",
    )
    context_sections: int = setting(
        0,
        help="the sections above and below each section that the model sees beside it, as "
        "extra input channels in the order -K..K (`unet_keras.io.context`); 0: none",
    )
    members: int = setting(
        1,
        help="the trained U-Nets whose probabilities the network averages (`unet-keras "
        "ensemble`), each of the shape `model` gives; 1: one U-Net",
    )

    def check(self) -> None:
        at_least(self, 0, "context_sections")
        at_least(self, 1, "members")
        if self.model.in_channels % (2 * self.context_sections + 1):
            raise ValueError(
                f"in_channels {self.model.in_channels} is not 2 * context_sections + 1 = "
                f"{2 * self.context_sections + 1} sections of the same channels"
            )

    @property
    def section_channels(self) -> int:
        """The channels of one section (`in_channels` counts every context section's)."""
        return self.model.in_channels // (2 * self.context_sections + 1)

    @property
    def threshold_value(self) -> float:
        """The threshold chosen after training, else 0.5."""
        return 0.5 if self.threshold is None else self.threshold.value


def parse_record(text: bytes | str, source: str | os.PathLike) -> ModelRecord:
    """A record from JSON text, or a ValueError that names where it came from."""
    try:
        return ModelRecord.from_dict(json.loads(text))
    except ValueError as error:
        raise ValueError(f"{source}: not a readable unet-keras record ({error})") from None

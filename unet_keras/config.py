"""Settings as dataclasses that round-trip through JSON.

Every stage reads its settings from here, so training, prediction and export agree on one
description of the data (mask convention, intensity normalisation) and of the model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

T = TypeVar("T")


def _as_plain(value: Any) -> Any:
    """Turns tuples into lists and nested configs into dicts, so the result is plain JSON."""
    if isinstance(value, _JsonConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_as_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_plain(item) for key, item in value.items()}
    return value


class _JsonConfig:
    """Mixin: `to_dict`/`from_dict` and JSON text, rejecting unknown keys by name."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON-compatible values."""
        return {f.name: _as_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Builds the config from `to_dict` output; unknown keys raise a ValueError."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown setting(s) {unknown}; expected some of {sorted(known)}"
            )
        converted = {}
        for name, value in values.items():
            # JSON has no tuples or nested configs: restore them from the field's default.
            default = known[name].default
            if isinstance(value, list) and isinstance(default, tuple):
                value = tuple(value)
            elif isinstance(value, dict) and isinstance(default, _JsonConfig):
                value = type(default).from_dict(value)
            converted[name] = value
        return cls(**converted)

    def to_json(self) -> str:
        """Returns the settings as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        """Parses `to_json` output."""
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class MaskConfig(_JsonConfig):
    """How mask pixel values map to classes, and back when masks are written.

    `class_values[k]` is the pixel value of class k. Two values make a binary task whose
    class 1 is the foreground ("cells": the objects the border weight map separates):
    ISBI 2012 masks are `(0, 255)` (membrane black, cell interior white); data sets that
    draw membranes white use `(255, 0)`. `threshold` (binary only) accepts lossy masks:
    values at or above it count as the larger class value.
    """

    class_values: tuple[int, ...] = (0, 255)
    threshold: float | None = None

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.class_values)
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(
                f"mask class_values must list at least two distinct pixel values, "
                f"got {self.class_values!r}"
            )
        if self.threshold is not None and len(values) != 2:
            raise ValueError(
                f"mask threshold applies to binary masks only; class_values "
                f"{values!r} has {len(values)} classes"
            )
        object.__setattr__(self, "class_values", values)

    @property
    def num_classes(self) -> int:
        """Number of classes the masks hold."""
        return len(self.class_values)

    @property
    def model_classes(self) -> int:
        """Output channels of the model: 1 (sigmoid) for binary masks, else one per class."""
        return 1 if self.num_classes == 2 else self.num_classes


@dataclasses.dataclass(frozen=True)
class NormalizationConfig(_JsonConfig):
    """Intensity normalisation learnt from the training images: `(x - offset) / scale`.

    Stored with the model so prediction and export apply exactly the training
    preprocessing. `offset` and `scale` hold one value per channel.
    """

    method: str = "standardize"
    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    input_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.method not in ("standardize", "unit_range"):
            raise ValueError(
                f"normalization method must be 'standardize' or 'unit_range', got {self.method!r}"
            )
        offset = tuple(float(v) for v in self.offset)
        scale = tuple(float(v) for v in self.scale)
        if len(offset) != len(scale):
            raise ValueError(
                f"normalization offset {offset} and scale {scale} need one value per channel"
            )
        if any(s <= 0 for s in scale):
            raise ValueError(f"normalization scale must be positive, got {scale}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @property
    def channels(self) -> int:
        """Number of image channels the normalisation was fitted on."""
        return len(self.offset)


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_JsonConfig):
    """Training augmentation: the paper's elastic deformation plus optional extras."""

    elastic: bool = True
    elastic_grid: tuple[int, int] = (3, 3)
    elastic_sigma: float = 10.0
    elastic_backend: str = "tensorflow"
    interpolation: str = "linear"
    flips: bool = True
    rotations: bool = True
    gamma: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        if self.elastic_backend not in ("tensorflow", "elasticdeform"):
            raise ValueError(
                f"elastic_backend must be 'tensorflow' or 'elasticdeform', "
                f"got {self.elastic_backend!r}"
            )
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(
                f"interpolation must be 'linear' or 'cubic', got {self.interpolation!r}"
            )
        grid = tuple(int(v) for v in self.elastic_grid)
        if len(grid) != 2 or min(grid) < 2:
            raise ValueError(
                f"elastic_grid must be two sizes of at least 2, got {self.elastic_grid!r}"
            )
        object.__setattr__(self, "elastic_grid", grid)
        for name in ("elastic_sigma", "gamma", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """The U-Net's shape: the keyword arguments of `unet_keras.build_unet`."""

    in_channels: int = 1
    classes: int = 1
    depth: int = 4
    filters: int = 64
    padding: str = "valid"
    batch_norm: bool = False
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        for name in ("in_channels", "classes", "depth", "filters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """Everything a training run needs; `train_keras.py` flags and config files set it.

    `data` None trains on the embedded synthetic EM data set. `class_values` None infers
    the mask convention from the masks (see `unet_keras.io.masks.infer_mask_config`).
    """

    data: str | None = None
    masks: str | None = None
    class_values: tuple[int, ...] | None = None
    mask_threshold: float | None = None
    foreground: str = "auto"
    normalization: str = "standardize"
    validation: int = 4
    model: ModelConfig = ModelConfig(filters=16)
    tile: int = 316
    augment: AugmentConfig = AugmentConfig()
    w0: float = 10.0
    sigma: float = 5.0
    loss: str = "cross_entropy"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.99
    schedule: str = "constant"
    batch_size: int = 2
    epochs: int = 40
    steps_per_epoch: int = 50
    seed: int = 0
    max_time: float | None = None
    run_dir: str = "runs/unet"
    strategy: str = "default"
    precision: str = "float32"
    jit_compile: bool = False

    def __post_init__(self) -> None:
        choices = {
            "loss": ("cross_entropy", "dice", "cross_entropy+dice"),
            "optimizer": ("sgd", "adam"),
            "schedule": ("constant", "cosine"),
            "strategy": ("default", "mirrored", "multiworker"),
            "precision": ("float32", "mixed_bfloat16", "mixed_float16"),
            "foreground": ("auto", "bright", "dark"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "epochs", "steps_per_epoch", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.validation < 0:
            raise ValueError(f"validation must be >= 0 images, got {self.validation}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be positive seconds, got {self.max_time}")
        if self.class_values is not None:
            object.__setattr__(self, "class_values", tuple(int(v) for v in self.class_values))

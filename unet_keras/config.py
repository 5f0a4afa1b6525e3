"""Settings and records as dataclasses: one place for each setting's type, default and help.

Every stage reads its settings from here, so training, prediction and export agree on one
description of the data (mask convention, intensity normalisation) and of the model. Each
field carries its help text (`setting`), and a `Literal` type lists its choices: the
`unet-keras` flags, their `--help`, the checks on values (from flags, config files or
Python) and README's settings table are all made from these fields.

`ModelRecord` is what a model file carries besides its weights, and what an export's
`metadata` signature returns: it must stay readable by every later stage and the client.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T", bound="Settings")


def setting(default: Any = dataclasses.MISSING, *, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text; `cli=False` keeps it off the command line,
    `positional=True` makes it a positional argument there."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of a settings class."""
    return typing.get_type_hints(cls)


def unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without `| None`, whether None is allowed)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        members = [k for k in typing.get_args(kind) if k is not type(None)]
        if len(members) == 1:
            return members[0], len(members) < len(typing.get_args(kind))
    return kind, False


def choices(kind: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal` type (or an optional one), else None."""
    kind, _ = unwrap_optional(kind)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


class Settings:
    """Mixin for frozen settings dataclasses: checked values and a JSON round trip.

    Values are checked against their field's type as they arrive (a config file or a
    record from a server may hold anything); subclasses add their own rules in `check`.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _checked(type(self), field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Raises a ValueError naming the setting when a value breaks a rule of the class."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON-compatible values."""
        return {f.name: _as_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Builds the settings from `to_dict` output, or part of it; unknown keys raise a
        ValueError. A nested section given in part keeps the rest of its default."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping of settings, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown setting(s) {unknown}; expected some of {sorted(fields)}"
            )
        missing = sorted(
            name
            for name, field in fields.items()
            if name not in values
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"{cls.__name__}: missing setting(s) {missing}")
        values = dict(values)
        for name, value in values.items():
            default = fields[name].default
            if isinstance(default, Settings) and isinstance(value, dict):
                values[name] = type(default).from_dict({**default.to_dict(), **value})
        return cls(**values)


def _as_plain(value: Any) -> Any:
    """Turns tuples into lists and nested settings into dicts, so the result is plain JSON."""
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_as_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_plain(item) for key, item in value.items()}
    return value


def _checked(cls: type, name: str, value: Any) -> Any:
    """`value` converted to the field's type (lists to tuples, dicts to settings), or a
    ValueError that names `cls.name`, the expected type and the value."""
    kind, optional = unwrap_optional(field_types(cls)[name])
    if value is None and optional:
        return None
    where = f"{cls.__name__}.{name}"
    allowed = choices(kind)
    if allowed is not None:
        if value not in allowed:
            raise ValueError(f"{where} must be one of {allowed}, got {value!r}")
        return value
    try:
        return _converted(kind, value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def _converted(kind: Any, value: Any) -> Any:
    """`value` as `kind`: int, float, str, bool, dict, a settings class or a tuple of them."""
    if isinstance(kind, type) and issubclass(kind, Settings):
        if isinstance(value, (list, tuple)):
            return kind(*value)  # the fields in order, e.g. TileSizes (572, 388)
        return value if isinstance(value, kind) else kind.from_dict(value)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        items = typing.get_args(kind)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_converted(items[0], item) for item in value)
        if len(items) != len(value):
            raise TypeError(f"expected {len(items)} values, got {value!r}")
        return tuple(_converted(k, item) for k, item in zip(items, value, strict=True))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind in names and type(value) is not kind:
        raise TypeError(f"expected {names[kind]}, got {value!r}")
    if typing.get_origin(kind) is dict and not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {value!r}")
    return value


def _at_least(settings: Settings, minimum: float, *names: str) -> None:
    """Raises unless every named setting is at least `minimum` (None passes)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


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
class AugmentConfig(Settings):
    """Training augmentation: the paper's elastic deformation plus optional extras."""

    elastic: bool = setting(
        True, help="elastic deformation (random displacements on a coarse grid, as in the paper)"
    )
    elastic_grid: tuple[int, int] = setting(
        (3, 3), help="control points of the displacement grid (rows columns)"
    )
    elastic_sigma: float = setting(
        10.0, help="standard deviation of the grid displacements in pixels"
    )
    elastic_backend: Literal["tensorflow", "elasticdeform"] = setting(
        "tensorflow", help="tensorflow (in-graph, parallel) or elasticdeform (reference)"
    )
    interpolation: Literal["linear", "cubic"] = setting(
        "linear", help="image interpolation under deformation"
    )
    flips: bool = setting(True, help="random left-right flips")
    # Off by default: a quarter turn also turns the annotation's own sub-pixel offset from
    # the image (ISBI 2012's masks sit 0.6 px above the membranes), which the model then
    # cannot learn; on ISBI, training without them cut held-out pixel error from 0.0858 to
    # 0.0834 (4 and 3 runs of 900 s, docs/benchmarks.md). Left-right flips keep the
    # vertical offset.
    rotations: bool = setting(False, help="random 90-degree rotations")
    gamma: float = setting(0.0, help="random gamma: exp(uniform(-g, g)); 0 disables it")
    contrast: float = setting(0.0, help="random contrast factor in [1 - c, 1 + c]; 0 disables it")

    def check(self) -> None:
        if min(self.elastic_grid) < 2:
            raise ValueError(
                f"elastic_grid must be two sizes of at least 2, got {self.elastic_grid!r}"
            )
        _at_least(self, 0, "elastic_sigma", "gamma", "contrast")

    @property
    def symmetries(self) -> str:
        """The flips and quarter turns training draws from, as `ModelRecord.symmetries`."""
        return next(k for k, v in SYMMETRIES.items() if v == (self.flips, self.rotations))


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
        _at_least(self, 1, "in_channels", "classes", "depth", "filters")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TileSizes(Settings):
    """A model's training tile: input and output side lengths in pixels."""

    input: int = setting(help="input tile side")
    output: int = setting(help="output tile side (smaller with valid padding)")


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

    @property
    def threshold_value(self) -> float:
        """The threshold chosen after training, else 0.5."""
        return 0.5 if self.threshold is None else self.threshold.value


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything a training run needs; `train_keras.py` flags and config files set it."""

    data: str | None = setting(
        None,
        help="data folder (images/ + masks/), ISBI TIFF stack, or images folder with --masks; "
        "none: the embedded synthetic EM data set",
    )
    masks: str | None = setting(
        None, help="masks folder or label stack when not beside the images"
    )
    class_values: tuple[int, ...] | None = setting(
        None,
        help="mask pixel value of each class, e.g. 0 255 (ISBI: membrane 0, cells 255) or "
        "255 0 (membrane drawn white); none: inferred from the masks",
    )
    mask_threshold: float | None = setting(
        None,
        help="binary masks only: values at or above it are the larger class value (for lossy "
        "masks)",
    )
    ignore_value: int | None = setting(
        None,
        help="mask pixel value of unlabelled pixels (sparse annotations): no loss, metric or "
        "calibration counts them",
    )
    foreground: Literal["auto", "bright", "dark"] = setting(
        "auto",
        help="with inferred binary masks: which value marks the cells (auto: the majority "
        "value, right for EM membrane masks)",
    )
    normalization: Literal["standardize", "unit_range"] = setting(
        "standardize",
        help="intensity normalisation learnt from the training images: standardize "
        "(mean/std) or unit_range (divide by the dtype maximum)",
    )
    validation: int = setting(4, help="whole images held out for validation")
    calibrate_by: Literal["auto", "adapted_rand_error", "pixel_error", "iou_0"] = setting(
        "auto",
        help="what the threshold chosen on the validation images after training optimises: "
        "auto (pixel error; membrane IoU iou_0 with sparse masks), or adapted_rand_error "
        "(objects; noisy on a few validation images); rerun a finished run to choose again",
    )
    # 16 filters, same padding, 256 px tiles: what a 2-core CPU learns most from in a budget
    # (docs/benchmarks.md, the recipe study); --padding valid is the paper's network.
    model: ModelConfig = setting(
        ModelConfig(filters=16, padding="same"), help="the network's shape"
    )
    tile: int = setting(
        256,
        help="input tile side in pixels (valid padding: the output is 184 px smaller at depth 4)",
    )
    augment: AugmentConfig = setting(AugmentConfig(), help="the augmentations")
    w0: float = setting(
        3.0, help="border weight map: weight of the gaps between cells (paper: 10)"
    )
    sigma: float = setting(5.0, help="border weight map: width of the gaps in pixels")
    loss: Literal["cross_entropy", "dice", "cross_entropy+dice"] = setting(
        "cross_entropy", help="cross_entropy is weighted by the border map"
    )
    optimizer: Literal["adam", "sgd"] = setting(
        "adam", help="adam, or sgd (the paper's, with --momentum)"
    )
    init_from: str | None = setting(
        None,
        help="start from trained weights: a .keras file, run directory, exported SavedModel "
        "version or shipped model (isbi2012-membranes); its network must have this run's shape",
    )
    freeze_encoder: int = setting(
        0,
        help="with --init-from: epochs at the start during which the contracting path stays fixed",
    )
    learning_rate: float = setting(1e-3, help="peak learning rate")
    momentum: float = setting(0.99, help="SGD momentum (paper: 0.99)")
    schedule: Literal["constant", "cosine"] = setting(
        "cosine",
        help="learning rate schedule over the run (the time budget or the epochs, whichever "
        "ends first): cosine (warm-up, then decay to 0 at the end) or constant",
    )
    warmup: float = setting(
        0.03, help="cosine schedule: fraction of the run over which the rate rises from 0"
    )
    batch_size: int = setting(2, help="tiles per step (global, over all replicas)")
    epochs: int | None = setting(
        None, help="epochs to train (default: as many as --max-time allows, else 40)"
    )
    steps_per_epoch: int = setting(50, help="training steps per epoch")
    seed: int = setting(0, help="random seed: data split, weights, tiles")
    max_time: float | None = setting(
        None,
        help="training time budget in seconds, over all sessions of a resumed run: the "
        "schedule spans it and the run stops at its end, keeping the best model",
    )
    run_dir: str = setting(
        "runs/unet", help="directory for the model, logs and summary; rerun to resume"
    )
    strategy: Literal["default", "mirrored", "multiworker"] = setting(
        "default", help="default, mirrored (GPUs of one machine) or multiworker (TF_CONFIG)"
    )
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = setting(
        "auto",
        help="auto: mixed_bfloat16 on CPUs with native bf16 (AVX512_BF16 or AMX) where "
        "TensorFlow runs oneDNN, else float32; mixed_float16 suits GPUs",
    )
    gradient_exchange: Literal["auto", "float32", "bfloat16"] = setting(
        "auto",
        help="dtype the replicas sum their gradients in (mirrored, multiworker); auto: "
        "bfloat16 under mixed_bfloat16, whose gradients carry bf16 precision already (half "
        "the bytes on the network), else float32",
    )
    onednn: Literal["auto", "on", "off"] = setting(
        "auto",
        help="oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS, read as TensorFlow loads); auto: "
        "on for models of at most 32 filters on x86 (1.5x faster at 16 filters on AVX2, "
        "where TensorFlow leaves them off), else TensorFlow's choice (on with AVX-512 bf16)",
    )
    jit_compile: bool = setting(False, help="compile the training step with XLA")

    def check(self) -> None:
        _at_least(self, 1, "batch_size", "epochs", "steps_per_epoch", "tile")
        _at_least(self, 0, "validation", "freeze_encoder")
        if self.freeze_encoder and not self.init_from:
            raise ValueError("freeze_encoder keeps trained weights fixed: give --init-from too")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be positive seconds, got {self.max_time}")


@dataclasses.dataclass(frozen=True)
class InferenceConfig(Settings):
    """How a model is run over images: tiles, batches, test-time augmentation, threshold."""

    tile: int | None = setting(
        None,
        help="input tile side in pixels (default: 700 for valid padding at depth 4, 512 for same)",
    )
    # 1: a model call of N tiles rounds differently for each N, so every call carries
    # exactly `batch_size` tiles (the last filled up with copies); with 1 that costs
    # nothing, and big tiles keep the cores busy on their own.
    batch_size: int = setting(1, help="tiles per model call")
    overlap: int | None = setting(
        None,
        help="same padding: overlap of neighbouring tiles in pixels (default: a quarter of "
        "the tile)",
    )
    tta: bool = setting(
        False,
        help="test-time augmentation: average the flips and rotations the model was trained "
        "with (up to 8, as many times slower)",
    )
    threshold: float | None = setting(
        None,
        help="one-channel models: probability at or above which a pixel is foreground "
        "(default: the one chosen on the validation images after training, else 0.5)",
    )

    def check(self) -> None:
        _at_least(self, 1, "tile", "batch_size")
        _at_least(self, 0, "overlap")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class InstanceConfig(Settings):
    """How predicted classes become labelled objects (see `unet_keras.inference.instances`)."""

    instances: Literal["cc", "watershed"] | None = setting(
        None,
        help="label the predicted objects: cc (connected components) or watershed (split at "
        "narrow necks); predict writes <stem>_labels.tif, evaluate scores them (default: cc)",
    )
    seed_height: float = setting(
        16.0,
        help="watershed: how far, in pixels, a cell's middle must rise above a neck for the "
        "cell to be cut there (16: chosen on ISBI validation sections, 4 nm pixels)",
    )
    min_object_size: int = setting(16, help="watershed: objects of fewer pixels join a neighbour")
    link_sections: bool = setting(
        False, help="stacks: join the objects of consecutive sections into 3D objects"
    )
    min_overlap: float = setting(
        0.5,
        help="with --link-sections: the fraction of the smaller object two objects must share",
    )

    def check(self) -> None:
        _at_least(self, 1, "min_object_size")
        if self.seed_height <= 0:
            raise ValueError(f"seed_height must be above 0, got {self.seed_height}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
        if self.link_sections and self.instances is None:
            raise ValueError("link_sections links objects: choose --instances cc or watershed")


_MODEL_HELP = "a training run directory, a .keras file or an exported SavedModel version"


@dataclasses.dataclass(frozen=True)
class PredictConfig(Settings):
    """`unet-keras predict`: segment images of any size into masks in the training
    convention."""

    model: str = setting(help=_MODEL_HELP)
    input: str = setting(
        help="image file, multi-page TIFF stack, folder of images, or Zarr / OME-Zarr volume "
        "(VOL.zarr or VOL.zarr/ARRAY)"
    )
    output: str = setting(help="folder for the masks (DIR/<stem>.png); for volumes OUT.zarr")
    probabilities: Literal["png", "tiff", "zarr"] | None = setting(
        None,
        help="also write probability maps: 16-bit PNG or float32 TIFF; for volumes zarr (float32)",
    )
    overlay: bool = setting(False, help="also write the images with predicted outlines")
    inference: InferenceConfig = setting(InferenceConfig(), help="how the model runs")
    objects: InstanceConfig = setting(InstanceConfig(), help="labelled objects")
    block: int | None = setting(
        None,
        help="volumes: rows and columns of a block, rounded up to whole chunks (default: 512)",
    )
    scheduler: str | None = setting(
        None,
        help="volumes: address of a Dask scheduler to send the blocks to, e.g. "
        "tcp://10.0.0.1:8786 (default: this machine)",
    )
    workers: int = setting(
        1, help="volumes without --scheduler: local worker processes (1: this process)"
    )

    def check(self) -> None:
        _at_least(self, 1, "block", "workers")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(Settings):
    """`unet-keras evaluate`: score a model on labelled images with the ISBI 2012 metrics."""

    model: str = setting(help=_MODEL_HELP)
    data: str = setting(help="data folder (images/ + masks/) or ISBI TIFF stack")
    masks: str | None = setting(None, help="masks folder or label stack, if not beside images")
    output: str | None = setting(None, help="folder for evaluation.json and a figure per image")
    sweep: bool = setting(
        False, help="also score thresholds 0.1..0.9 and report the best by adapted Rand error"
    )
    ignore_value: int | None = setting(
        None,
        help="mask pixel value of unlabelled truth pixels, which no score counts (default: "
        "the one the model was trained with)",
    )
    inference: InferenceConfig = setting(InferenceConfig(), help="how the model runs")
    objects: InstanceConfig = setting(InstanceConfig(), help="labelled objects")


# A 16384 x 16384 image: larger requests are refused (INVALID_ARGUMENT) before any work,
# which also guards PNG input against decompression bombs.
DEFAULT_MAX_PIXELS = 16384 * 16384


@dataclasses.dataclass(frozen=True)
class ExportConfig(Settings):
    """`unet-keras export`: the next SavedModel version that TensorFlow Serving serves."""

    model: str = setting(help="a training run directory or a .keras file")
    base_path: str | None = setting(
        None, help="savedmodel: model base path; versions go to BASE/<n>/"
    )
    format: Literal["savedmodel", "bioimageio"] = setting(
        "savedmodel",
        help="savedmodel (TensorFlow Serving) or bioimageio (a BioImage.IO model package)",
    )
    output: str | None = setting(None, help="bioimageio: the package to write, PKG.zip")
    version: int | None = setting(None, help="version number (default: one more than the latest)")
    tile: int | None = setting(
        None,
        help="largest input tile the graph runs at once (default: 700 for valid padding at "
        "depth 4, 512 for same padding), as predict's --tile",
    )
    overlap: int | None = setting(
        None,
        help="same padding: overlap of neighbouring tiles in pixels (default: a quarter of "
        "the tile), as predict's --overlap",
    )
    threshold: float | None = setting(
        None,
        help="one-channel models: probability at or above which the mask is foreground "
        "(default: the one chosen on the validation images after training, else 0.5)",
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        help="largest image (H x W) a request may carry; larger ones get INVALID_ARGUMENT",
    )
    warmup: bool = setting(
        True,
        help="write warmup requests (assets.extra/tf_serving_warmup_requests), which the "
        "server replays before a version is AVAILABLE so that its first request is not slow",
    )

    def check(self) -> None:
        _at_least(self, 1, "version", "tile", "max_pixels")
        _at_least(self, 0, "overlap")
        needed = {"savedmodel": ("base_path", "--base-path"), "bioimageio": ("output", "--output")}
        name, flag = needed[self.format]
        if getattr(self, name) is None:
            raise ValueError(f"export --format {self.format} needs {flag}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


# TF Serving's message limit in both directions (ServerBuilder::SetMaxMessageSize(INT32_MAX)).
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ServeConfig(Settings):
    """`unet-keras serve`: a local server with TensorFlow Serving's gRPC and REST APIs. It takes
    tensorflow_model_server's flags as spelled there (--model_base_path=B), with the same
    meanings; each flag also takes hyphens (--model-base-path B)."""

    model_base_path: str | None = setting(
        None, help="folder of numbered SavedModel versions (BASE/1/, ...) of one model"
    )
    model_name: str = setting("unet", help="the name requests give in their model spec")
    model_config_file: str | None = setting(
        None,
        help="a text ModelServerConfig (several models, version policies, version labels), "
        "instead of --model_base_path and --model_name",
    )
    model_config_file_poll_wait_seconds: float = setting(
        0.0, help="seconds between re-reads of --model_config_file (0: read it once)"
    )
    file_system_poll_wait_seconds: float = setting(
        1.0,
        help="seconds between looks at the base paths for new versions (0: look once)",
        aliases=("--poll-seconds",),
    )
    allow_version_labels_for_unavailable_models: bool = setting(
        False,
        help="let new version labels name versions not yet AVAILABLE (needed for labels in "
        "the config a server starts with)",
    )
    max_num_load_retries: int = setting(
        5, help="times a version that failed to load is tried again (LOADING meanwhile)"
    )
    load_retry_interval_micros: int = setting(
        60_000_000, help="microseconds between tries of a version that failed to load"
    )
    enable_model_warmup: bool = setting(
        True, help="replay a version's assets.extra/tf_serving_warmup_requests as it loads"
    )
    port: int = setting(8500, help="gRPC port (0: any free port)")
    grpc_max_threads: int = setting(
        16, help="gRPC requests served at once", aliases=("--threads",)
    )
    grpc_channel_arguments: str = setting(
        "",
        help="gRPC server arguments, KEY=VALUE,KEY=VALUE (e.g. grpc.max_connection_age_ms=300000)",
    )
    enable_grpc_healthcheck_service: bool = setting(
        True,
        help="the standard grpc.health.v1 service: SERVING once every model (service '') or "
        "the model named has an AVAILABLE version, NOT_SERVING while draining",
    )
    rest_api_port: int = setting(8501, help="REST API port (0: no REST API)")
    rest_api_num_threads: int | None = setting(
        None, help="REST requests served at once (default: --grpc_max_threads)"
    )
    rest_api_timeout_in_ms: int = setting(
        30_000,
        help="a REST predict's graph run is cancelled after this, answered 504 (0: no limit)",
    )
    rest_api_enable_cors_support: bool = setting(
        False, help="CORS headers on REST answers (Access-Control-Allow-Origin: *)"
    )
    monitoring_config_file: str | None = setting(
        None,
        help="a text MonitoringConfig; with prometheus_config enabled, Prometheus metrics are "
        "served on the REST port",
    )
    ssl_config_file: str | None = setting(
        None,
        help="a text SSLConfig (server_key, server_cert PEM; custom_ca, client_verify): serve "
        "over TLS, on both ports",
    )
    tensorflow_session_parallelism: int = setting(
        0, help="threads of each graph's inter- and intra-op pools (0: TensorFlow's choice)"
    )
    tensorflow_intra_op_parallelism: int = setting(
        0, help="threads of each graph's intra-op pool (0: TensorFlow's choice)"
    )
    tensorflow_inter_op_parallelism: int = setting(
        0, help="threads of each graph's inter-op pool (0: TensorFlow's choice)"
    )
    enable_batching: bool = setting(
        False,
        help="server-side batching; not offered: requests carry whole images of any size, "
        "which the export tiles itself (serving/batching.config)",
    )
    batching_parameters_file: str | None = setting(
        None, help="a text BatchingParameters for --enable_batching (not offered)"
    )
    host: str = setting("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    tls_cert: str | None = setting(None, help="PEM certificate chain: serve over TLS")
    tls_key: str | None = setting(None, help="PEM private key of --tls-cert")
    tls_client_ca: str | None = setting(
        None, help="PEM CA certificates: require clients to present a certificate they signed"
    )
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES, help="largest request or response message (a REST body too)"
    )
    max_concurrent_requests: int = setting(
        32,
        help="requests in progress or queued, per API; more get RESOURCE_EXHAUSTED (REST: 429) "
        "at once, as each holds its message in memory",
    )
    max_request_batch: int = setting(
        64,
        help="largest first dimension (images, tiles) of a request's inputs; more are refused "
        "before any work, as tiny images cost more to run than to send",
    )
    rest_body_timeout_seconds: float = setting(
        30.0,
        help="a REST request's headers and body must arrive within this, else 408 and the "
        "connection closes (slow clients cannot hold the request slots)",
    )
    rest_idle_timeout_seconds: float = setting(
        15.0, help="an idle REST connection is closed after this (keep-alive)"
    )
    grace_seconds: float = setting(
        30.0,
        help="on SIGTERM or SIGINT, how long requests in flight may take to finish; then "
        "their runs are cancelled and the process ends",
    )

    def check(self) -> None:
        _at_least(self, 0, "port", "rest_api_port", "grace_seconds", "max_num_load_retries")
        _at_least(self, 0, "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds")
        _at_least(self, 0, "rest_api_timeout_in_ms", "load_retry_interval_micros")
        _at_least(self, 0, "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism")
        _at_least(self, 0, "tensorflow_inter_op_parallelism")
        _at_least(self, 1, "max_message_bytes", "grpc_max_threads", "max_concurrent_requests")
        _at_least(self, 1, "rest_api_num_threads", "max_request_batch")
        for name in ("rest_body_timeout_seconds", "rest_idle_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if (self.model_base_path is None) == (self.model_config_file is None):
            raise ValueError(
                "give --model_base_path (one model) or --model_config_file (several), not both"
                if self.model_base_path
                else "give --model_base_path (one model) or --model_config_file (several)"
            )
        if self.enable_batching or self.batching_parameters_file is not None:
            raise ValueError(
                "--enable_batching and --batching_parameters_file: unet-keras serve offers no "
                "server-side batching (requests carry whole images of any size, which the "
                "export tiles itself); serve without them, or use tensorflow_model_server"
            )
        if self.tensorflow_session_parallelism and (
            self.tensorflow_intra_op_parallelism or self.tensorflow_inter_op_parallelism
        ):
            raise ValueError(
                "give --tensorflow_session_parallelism or --tensorflow_intra_op_parallelism and "
                "--tensorflow_inter_op_parallelism, not both (as tensorflow_model_server)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS too")
        if self.ssl_config_file is not None and self.tls_cert is not None:
            raise ValueError("give --ssl_config_file or --tls-cert and --tls-key, not both")


# tensorflow_model_server's flags (main.cc, 2.20) that `unet-keras serve` does not take, and
# why: each is refused by name rather than accepted and ignored.
UNSUPPORTED_SERVER_FLAGS = {
    "grpc_socket_path": "gRPC on a UNIX socket",
    "enable_per_model_batching_parameters": "server-side batching",
    "num_load_threads": "parallel loads (versions load one at a time)",
    "num_unload_threads": "parallel unloads",
    "flush_filesystem_caches": "file system cache flushing",
    "tensorflow_session_config_file": "a session ConfigProto (the parallelism flags are taken)",
    "use_alts_credentials": "ALTS credentials (--ssl_config_file is taken)",
    "platform_config_file": "platform configs",
    "per_process_gpu_memory_fraction": "GPU memory fractions",
    "saved_model_tags": "tags other than 'serve'",
    "num_request_iterations_for_warmup": "repeated warmup",
    "version": "--version (pip show unet-keras)",
    "remove_unused_fields_from_bundle_metagraph": "MetaGraphDef trimming",
    "prefer_tflite_model": "TensorFlow Lite models",
    "num_tflite_pools": "TensorFlow Lite models",
    "num_tflite_interpreters_per_pool": "TensorFlow Lite models",
    "enable_signature_method_name_check": "signature method name checks",
    "xla_cpu_compilation_enabled": "XLA compilation",
    "xla_gpu_compilation_enabled": "XLA compilation",
    "enable_profiler": "the profiler service",
    "thread_pool_factory_config_file": "thread pool factories",
    "mixed_precision": "serving-time mixed precision",
    "skip_initialize_tpu": "TPUs",
    "enable_serialization_as_tensor_content": "outputs in tensor_content",
}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(Settings):
    """`unet-keras synthetic`: write the embedded synthetic EM data set as image/mask
    folders."""

    output: str = setting(help="folder to create images/ and masks/ in", positional=True)
    count: int = setting(24, help="number of image/mask pairs")
    size: int = setting(512, help="side length in pixels")
    seed: int = setting(0, help="random seed")


@dataclasses.dataclass(frozen=True)
class InspectConfig(Settings):
    """`unet-keras inspect`: load a data set as training would and report what it holds."""

    data: str = setting(
        help="data folder (images/ + masks/), image folder or TIFF stack", positional=True
    )
    masks: str | None = setting(None, help="mask folder or label stack, if not beside data")
    foreground: Literal["auto", "bright", "dark"] = setting(
        "auto", help="which mask value marks the objects (auto: the majority value, as in EM)"
    )
    ignore_value: int | None = setting(
        None, help="mask pixel value of unlabelled pixels (sparse annotations)"
    )

"""From a data set to training examples: mask convention, split, normalisation, weights.

Everything here is computed once per image, before the `tf.data` pipeline: normalised
images, class labels and the paper's border weight map. NumPy and SciPy only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from unet_keras.geometry import check_input_size, output_size
from unet_keras.io.context import check_stack, stacked_normalization, with_context
from unet_keras.io.masks import infer_mask_config, mask_to_labels
from unet_keras.io.normalization import fit_normalization, normalize
from unet_keras.io.readers import load_dataset
from unet_keras.io.sample import DataError, Sample
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig, TileSizes
from unet_keras.training.training_settings import TrainConfig
from unet_keras.training.weights import border_weight_map

log = logging.getLogger(__name__)


class _HasName(Protocol):
    name: str


Named = TypeVar("Named", bound=_HasName)


@dataclasses.dataclass(frozen=True)
class Example:
    """A training example ready for the pipeline: everything computed once per image."""

    name: str
    image: np.ndarray  # float32 [H, W, C], normalised
    labels: np.ndarray  # int32 [H, W], class indices; IGNORED where unlabelled
    weights: np.ndarray  # float32 [H, W], the paper's border weight map; 0 where unlabelled


def prepare_examples(
    samples: Sequence[Sample],
    mask_config: MaskConfig,
    normalization: NormalizationConfig,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> list[Example]:
    """Normalises images, turns masks into class labels and computes each weight map once."""
    examples = []
    for sample in samples:
        if sample.mask is None:
            raise ValueError(f"{sample.name}: training needs a mask for every image, found none")
        labels = mask_to_labels(sample.mask, mask_config, source=sample.name)
        examples.append(
            Example(
                name=sample.name,
                image=normalize(sample.image, normalization, source=sample.name),
                labels=labels,
                weights=border_weight_map(labels, w0, sigma, mask_config.num_classes),
            )
        )
    return examples


def split_by_image(
    examples: Sequence[Named], validation: int | Sequence[str], seed: int = 0
) -> tuple[list[Named], list[Named]]:
    """Splits whole images into training and validation: a count drawn at random, or names.

    Works on anything named per image (`Sample`s before preparation, `Example`s after).

    Splitting by image, never by augmented copy, keeps validation honest: tiles of one
    section look alike, so a split of augmented copies scores a memorised section.
    """
    names = [example.name for example in examples]
    if isinstance(validation, int):
        if not 0 <= validation < len(examples):
            raise ValueError(
                f"validation count must be in [0, {len(examples) - 1}] for "
                f"{len(examples)} images, got {validation}"
            )
        order = np.random.default_rng(seed).permutation(len(examples))
        chosen = {names[i] for i in order[:validation]}
    else:
        chosen = set(validation)
        unknown = sorted(chosen - set(names))
        if unknown:
            raise ValueError(f"validation images {unknown} are not in the data set {names}")
    training = [example for example in examples if example.name not in chosen]
    held_out = [example for example in examples if example.name in chosen]
    if not training:
        raise ValueError("the validation split leaves no image for training")
    return training, held_out


@dataclasses.dataclass
class PreparedData:
    """What the data decided: examples, the held-out images, and the model's record."""

    training: list[Example]
    validation: list[Example]
    # As read (with context: each image is its section with its neighbours as channels):
    # calibration predicts on them.
    validation_samples: list[Sample]
    record: ModelRecord


def tile_sizes(model: ModelConfig, tile: int) -> TileSizes:
    """Input and output tile sides; a tile the model cannot use raises naming ones it can."""
    try:
        check_input_size(tile, model.depth, model.padding)
    except ValueError as error:
        raise ValueError(f"--tile: {error}") from None
    return TileSizes(tile, output_size(tile, model.depth, model.padding))


def load_samples(config: TrainConfig) -> list[Sample]:
    """The labelled samples a run trains on: `config.data`, or the embedded synthetic set."""
    if config.data is None:
        if config.context_sections:
            # Its images are drawn independently: no section has neighbours to learn from.
            raise ValueError(
                f"--context-sections {config.context_sections} needs a stack of sections, "
                "but without --data training uses the synthetic data set, whose images are "
                "unrelated; give --data a multi-page TIFF stack or a folder of sections"
            )
        log.info("no --data given: training on 24 synthetic EM sections of 512x512")
        return synthetic_em_images(24, (512, 512), seed=config.seed)
    return load_dataset(config.data, config.masks, require_masks=True)


def prepare_data(config: TrainConfig) -> PreparedData:
    """Loads the data, settles the mask convention and normalisation, splits by image.

    With `--context-sections K` each image becomes its section with the K sections above
    and below it as channels (`unet_keras.io.context`), and the record says so.
    """
    tile = tile_sizes(config.model, config.tile)  # a bad tile fails before any loading
    samples = load_samples(config)
    k = config.context_sections
    if k:
        _check_sections(samples, config)
    mask = _mask_config(config, [s.mask for s in samples])
    held_out = config.validation
    if held_out >= len(samples):
        raise ValueError(
            f"--validation {held_out} leaves no training image of {len(samples)}; "
            f"use at most {len(samples) - 1}"
        )
    training, validation = split_by_image(samples, held_out, seed=config.seed)
    # Normalisation is learnt from the training images only: validation stays unseen.
    normalization = fit_normalization([s.image for s in training], config.normalization)
    if k:
        # Every section, validation sections too, gets its neighbours' images (never their
        # masks), in stack order.
        normalization = stacked_normalization(normalization, k)
        stacked = {sample.name: sample for sample in _with_context_samples(samples, k)}
        training = [stacked[sample.name] for sample in training]
        validation = [stacked[sample.name] for sample in validation]
    model = _model_config(config.model, mask, training[0].image.shape[-1])
    prepare = dict(mask_config=mask, normalization=normalization, w0=config.w0, sigma=config.sigma)
    record = ModelRecord(
        mask, normalization, model, tile, symmetries=config.augment.symmetries, context_sections=k
    )
    return PreparedData(
        training=prepare_examples(training, **prepare),
        validation=prepare_examples(validation, **prepare),
        validation_samples=validation,
        record=record,
    )


def _with_context_samples(samples: Sequence[Sample], k: int) -> list[Sample]:
    """Each sample of a stack (in section order) with its K neighbours' images as channels."""
    images = [sample.image for sample in samples]
    return [
        Sample(sample.name, with_context(images, index, k), sample.mask)
        for index, sample in enumerate(samples)
    ]


def _check_sections(samples: Sequence[Sample], config: TrainConfig) -> None:
    """Raises a DataError unless the samples are a stack of two or more same-size sections."""
    source = f"--data {config.data} (--context-sections {config.context_sections})"
    check_stack(len(samples), config.context_sections, source)
    sizes = {sample.image.shape[:2] for sample in samples}
    if len(sizes) > 1:
        raise DataError(
            f"--data {config.data}: --context-sections {config.context_sections} stacks "
            f"neighbouring sections as channels, so they must share one size, but they are "
            f"{', '.join(f'{h}x{w}' for h, w in sorted(sizes))}"
        )


def _mask_config(config: TrainConfig, masks: list[np.ndarray]) -> MaskConfig:
    """The mask convention: as given, or inferred from the masks (and logged)."""
    if config.class_values is not None:
        return MaskConfig(config.class_values, config.mask_threshold, config.ignore_value)
    if config.mask_threshold is not None:
        raise ValueError(
            "--mask-threshold needs --class-values: with lossy masks the values cannot be "
            "inferred (for ISBI-style masks use --class-values 0 255)"
        )
    mask = infer_mask_config(masks, foreground=config.foreground, ignore_value=config.ignore_value)
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

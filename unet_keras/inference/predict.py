"""Segmenting image files, folders and TIFF stacks, and scoring the results against masks.

`predict_path` writes, for each input, the mask in the training masks' convention and,
on request, the probability map and an overlay of the predicted boundaries. A single image
`a.png` gives `a.png`, `a_probabilities.png` (or `.tif`) and `a_overlay.png`; a stack
`v.tif` gives the stacks `v.tif`, `v_probabilities.tif` and `v_overlay.tif`. An input that
cannot be read or predicted is reported by name and the others are still processed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unet_keras.evaluation.scores import (
    SWEEP_THRESHOLDS,
    best_threshold,
    evaluation_figure,
    image_to_rgb,
    mean_scores,
    segmentation_scores,
    threshold_sweep,
)
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.atomic import atomic_path
from unet_keras.io.masks import mask_to_labels
from unet_keras.io.readers import IMAGE_SUFFIXES, list_images, load_dataset, read_pages
from unet_keras.io.sample import DataError
from unet_keras.io.writers import write_image, write_stack

log = logging.getLogger(__name__)

PROBABILITY_FORMATS = ("png", "tiff")
OVERLAY_COLOUR = (255, 48, 48)


@dataclasses.dataclass
class PredictionReport:
    """What `predict_path` wrote, and the inputs it could not process with the reason."""

    written: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def predict_path(
    segmenter: Segmenter,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    probabilities: str | None = None,
    overlays: bool = False,
    progress: bool = False,
) -> PredictionReport:
    """Segments an image file, a TIFF stack, or every image of a folder into `output`.

    `probabilities` ("png": 16-bit PNG of the foreground probability, one-channel models
    only; "tiff": float32) also writes the probability maps; `overlays` the images with
    the predicted boundaries drawn in.
    """
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(
            f"probabilities must be one of {PROBABILITY_FORMATS}, got {probabilities!r}"
        )
    if probabilities == "png" and segmenter.classes > 1:
        raise ValueError(
            f"16-bit PNG probability maps hold one channel; this model has {segmenter.classes} "
            "classes: use probabilities='tiff'"
        )
    source, output = Path(source), Path(output)
    files = _input_files(source)
    report = PredictionReport()
    # One bar over the files of a folder; over the tiles of a single (large) image.
    per_file = progress and len(files) > 1
    for path in tqdm(files, disable=not per_file, unit="image"):
        try:
            report.written += _predict_file(
                segmenter, path, output, probabilities, overlays, progress and not per_file
            )
        except (DataError, OSError) as error:
            log.error("%s: %s", path, error)
            report.failed.append((str(path), str(error)))
    return report


def evaluate_path(
    segmenter: Segmenter,
    data: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    sweep: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Scores the model on labelled data; with `output`, writes the JSON and one figure each.

    Returns `{"images": [{"name", "scores"}...], "mean": {...}}`, and with `sweep` (binary
    models) also the mean scores at each threshold and the best threshold by adapted Rand
    error, the ISBI 2012 ranking score.
    """
    if sweep and segmenter.classes != 1:
        raise ValueError("a threshold sweep needs a one-channel (sigmoid) model")
    samples = load_dataset(data, masks, require_masks=True)
    images, sweeps = [], []
    for sample in samples:
        truth = mask_to_labels(sample.mask, segmenter.mask_config, sample.name)
        probabilities = segmenter.probabilities(sample.image, sample.name, progress)
        predicted = segmenter.labels(probabilities)
        scores = segmentation_scores(predicted, truth, segmenter.mask_config.num_classes)
        images.append({"name": sample.name, "scores": scores})
        if sweep:
            sweeps.append(threshold_sweep(probabilities[..., 0], truth, SWEEP_THRESHOLDS))
        if output is not None:
            figure = evaluation_figure(sample.image, truth, predicted)
            write_image(Path(output) / f"{_safe_stem(sample.name)}_evaluation.png", figure)
        if progress:
            log.info("%s: %s", sample.name, _brief(scores))
    report: dict[str, Any] = {
        "threshold": segmenter.threshold,
        "tta": segmenter.tta,
        "images": images,
        "mean": mean_scores([image["scores"] for image in images]),
    }
    if sweep:
        by_threshold = [mean_scores(list(entries)) for entries in zip(*sweeps, strict=True)]
        report["sweep"] = by_threshold
        report["best_threshold"] = best_threshold(by_threshold)
    if output is not None:
        with atomic_path(Path(output) / "evaluation.json") as temporary:
            temporary.write_text(json.dumps(report, indent=2))
    return report


def boundary_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image as 8-bit RGB with the predicted objects' outlines drawn in red."""
    rgb = image_to_rgb(image)
    edges = np.zeros(labels.shape, bool)
    # An object pixel is on an outline when a 4-neighbour belongs to another class.
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    rgb[edges & (labels > 0)] = OVERLAY_COLOUR
    return rgb


def _input_files(source: Path) -> list[Path]:
    """The image files to segment: the file itself, or a folder's (or its images/) files."""
    if source.is_file():
        return [source]
    if (source / "images").is_dir():
        source = source / "images"
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    files = list(list_images(source).values())
    log.info("%s: %d image files (%s)", source, len(files), ", ".join(IMAGE_SUFFIXES))
    return files


def _predict_file(
    segmenter: Segmenter,
    path: Path,
    output: Path,
    probabilities: str | None,
    overlays: bool,
    progress: bool,
) -> list[Path]:
    """Segments one file (every page of a stack) and writes its outputs; returns their paths."""
    pages, is_stack = read_pages(path)
    maps = [segmenter.probabilities(page, f"{path}", progress) for page in pages]
    labels = [segmenter.labels(p) for p in maps]
    masks = np.stack([segmenter.mask(label) for label in labels])
    outputs: dict[Path, np.ndarray] = {}
    suffix = ".tif" if is_stack else ".png"
    outputs[output / f"{path.stem}{suffix}"] = masks
    if probabilities:
        maps = np.stack(maps)
        if probabilities == "png" and not is_stack:
            outputs[output / f"{path.stem}_probabilities.png"] = np.round(
                maps[..., 0] * 65535
            ).astype(np.uint16)
        else:
            outputs[output / f"{path.stem}_probabilities.tif"] = maps
    if overlays:
        overlay = np.stack(
            [boundary_overlay(p, lab) for p, lab in zip(pages, labels, strict=True)]
        )
        outputs[output / f"{path.stem}_overlay{suffix}"] = overlay
    for target, array in outputs.items():
        if is_stack:
            write_stack(target, array)
        else:
            write_image(target, array[0])
    return list(outputs)


def _safe_stem(name: str) -> str:
    """A file stem for a sample name: `v.tif[03]` -> `v_03`, `a.png` -> `a`."""
    match = re.fullmatch(r"(.*?)(\.[^.\[]+)?(?:\[(\d+)\])?", name)
    stem, _, page = match.groups()
    return f"{stem}_{page}" if page else stem


def _brief(scores: dict[str, float]) -> str:
    """The headline scores as a short line for logs."""
    keys = ("pixel_error", "adapted_rand_error", "vi_split", "vi_merge")
    return ", ".join(f"{key} {scores[key]:.4f}" for key in keys)

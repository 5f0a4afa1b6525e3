"""Scoring a model on labelled images: per-image and mean scores, figures, a threshold sweep."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from unet_keras.evaluation.figures import evaluation_figure
from unet_keras.evaluation.scores import (
    SWEEP_THRESHOLDS,
    best_threshold,
    mean_scores,
    segmentation_scores,
    threshold_sweep,
)
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.atomic import atomic_path
from unet_keras.io.masks import mask_to_labels
from unet_keras.io.readers import load_dataset
from unet_keras.io.writers import write_image

log = logging.getLogger(__name__)


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


def _safe_stem(name: str) -> str:
    """A file stem for a sample name: `v.tif[03]` -> `v_03`, `a.png` -> `a`."""
    match = re.fullmatch(r"(.*?)(\.[^.\[]+)?(?:\[(\d+)\])?", name)
    stem, _, page = match.groups()
    return f"{stem}_{page}" if page else stem


def _brief(scores: dict[str, float]) -> str:
    """The headline scores as a short line for logs."""
    keys = ("pixel_error", "adapted_rand_error", "vi_split", "vi_merge")
    return ", ".join(f"{key} {scores[key]:.4f}" for key in keys)

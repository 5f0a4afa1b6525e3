"""Scoring a model on labelled images: per-image and mean scores, figures, a threshold sweep."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from unet_keras.evaluation.challenge import ChallengeScores
from unet_keras.evaluation.figures import evaluation_figure, instance_figure
from unet_keras.evaluation.scores import (
    SWEEP_THRESHOLDS,
    best_threshold,
    isbi_pixel_errors,
    mean_scores,
    pixel_counts,
    segmentation_scores,
    threshold_sweep,
)
from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import instance_labels, label_objects
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.atomic import atomic_path
from unet_keras.io.context import check_stack, with_context
from unet_keras.io.masks import IGNORED, mask_to_labels
from unet_keras.io.readers import load_dataset
from unet_keras.io.stacks import check_alike
from unet_keras.io.writers import write_image

log = logging.getLogger(__name__)


def evaluate_path(
    segmenter: Segmenter,
    data: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    sweep: bool = False,
    objects: InstanceConfig | None = None,
    ignore_value: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Scores the model on labelled data; with `output`, writes the JSON and figures.

    Returns `{"images": [{"name", "scores"}...], "mean": {...}}`, and with `sweep` (binary
    models) also the mean scores at each threshold and the best threshold by adapted Rand
    error (of the objects: the challenge's own V^Rand is in `challenge`), and the
    challenge's pixel error (1 - the maximal F-score of cell pixels, pooled over the
    images; see `isbi_pixel_errors`) with its threshold. The objects scored are those
    `objects` labels (connected components by default), as `predict` writes them.
    `ignore_value` marks unlabelled truth pixels (default: the model's own mask
    convention). Figures per image: `<stem>_evaluation.png` (classes and errors) and
    `<stem>_objects.png` (objects).

    One-channel models also get `challenge`: the scores the ISBI 2012 challenge ranked by,
    V^Rand and V^Info after border thinning (means over the images) and its pixel error,
    each at its best threshold of 0.0, 0.1, ..., 1.0 and all at the model's own threshold
    (`at_threshold`), as `challenge.ChallengeScores.summary` reports them, and each image
    its own at the stack's best thresholds (`images[i]["challenge"]`: which sections lose
    the stack's V^Rand). They score the thresholded probabilities as the challenge does,
    not the `objects`.

    A model with context (`ModelRecord.context_sections` K > 0) scores each section of
    the stack (a TIFF stack's pages, or a folder's images in name order) predicted with
    the K sections above and below it; a lone image is refused.
    """
    if sweep and segmenter.classes != 1:
        raise ValueError("a threshold sweep needs a one-channel (sigmoid) model")
    objects = objects or InstanceConfig()
    mask_config = segmenter.mask_config
    if ignore_value is not None:
        mask_config = dataclasses.replace(mask_config, ignore_value=ignore_value)
    samples = load_dataset(data, masks, require_masks=True)
    images, sweeps = [], []
    counts = np.zeros((len(SWEEP_THRESHOLDS), 3), np.int64)
    challenge = ChallengeScores(segmenter.threshold) if segmenter.classes == 1 else None
    k = segmenter.context_sections
    sections = [sample.image for sample in samples]
    if k:
        check_stack(len(samples), k, str(data))
        for sample in samples[1:]:
            check_alike(sample.image, sample.name, samples[0].image, samples[0].name)
    for index, sample in enumerate(samples):
        truth = mask_to_labels(sample.mask, mask_config, sample.name)
        image = with_context(sections, index, k)
        probabilities = segmenter.probabilities(image, sample.name, progress)
        predicted = segmenter.labels(probabilities)
        # Objects are found on what the truth labels: predictions on unlabelled pixels
        # (sparse truth) change no score; with full truth these are predict's objects.
        found = label_objects(np.where(truth == IGNORED, 0, predicted), objects)
        scores = segmentation_scores(predicted, truth, mask_config.num_classes, found)
        images.append({"name": sample.name, "scores": scores})
        if sweep:
            sweeps.append(threshold_sweep(probabilities[..., 0], truth, SWEEP_THRESHOLDS))
            counts += pixel_counts(probabilities[..., 0], truth, SWEEP_THRESHOLDS)
        if challenge is not None:
            challenge.add(probabilities[..., 0], truth)
        if output is not None:
            stem = Path(output) / _safe_stem(sample.name)
            figure = evaluation_figure(sample.image, truth, predicted)
            write_image(f"{stem}_evaluation.png", figure)
            figure = instance_figure(sample.image, instance_labels(truth), found)
            write_image(f"{stem}_objects.png", figure)
        if progress:
            log.info("%s: %s", sample.name, _brief(scores))
    report: dict[str, Any] = {
        "threshold": segmenter.threshold,
        "tta": segmenter.tta,
        "instances": objects.instances or "cc",
        "images": images,
        "mean": mean_scores([image["scores"] for image in images]),
    }
    if sweep:
        by_threshold = [mean_scores(list(entries)) for entries in zip(*sweeps, strict=True)]
        # Pooled over the images, not averaged per image: the challenge's definition.
        for entry, error in zip(by_threshold, isbi_pixel_errors(counts), strict=True):
            entry["isbi_pixel_error"] = float(error)
        report["sweep"] = by_threshold
        report["best_threshold"] = best_threshold(by_threshold)
        lowest = best_threshold(by_threshold, "isbi_pixel_error")
        report["isbi_pixel_error"] = {
            "value": lowest["isbi_pixel_error"],
            "threshold": lowest["threshold"],
        }
    if challenge is not None:
        report["challenge"] = challenge.summary()
        for image, scores in zip(images, challenge.section_scores(), strict=True):
            image["challenge"] = scores
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
    counts = ("objects", "truth_objects", "split_errors", "merge_errors")
    brief = ", ".join(f"{key} {scores[key]:.4f}" for key in keys)
    return brief + ", " + ", ".join(f"{key} {scores[key]:.0f}" for key in counts)

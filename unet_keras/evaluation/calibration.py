"""Choosing a binary model's threshold on its validation images, after training.

Class-balancing weights (the paper's w_c) and the border term make a trained model's
probabilities lean towards the rarer class, so 0.5 is rarely the best threshold: on ISBI
2012 it leaves twice the adapted Rand error of the best one. After training, the
threshold that scores best on the run's validation images (never the training images) is
stored in the model's record; prediction, evaluation and export use it unless told
otherwise.

It is chosen by pixel error unless the validation masks are sparse. Pixel error counts
every pixel, so on a few validation images it is a steady guide; adapted Rand error, the
ISBI 2012 ranking score, turns on the few gaps that join or split cells, and chosen by it
on 2 validation sections the threshold jumped between runs (0.30 and 0.50 for the same
seed). Over 14 runs of 900 s on ISBI (two held-out splits), the threshold chosen by pixel
error scored lower held-out pixel error in 9 runs and higher in 1 (mean 0.0855 against
0.0895), with objects as good (adapted Rand error 0.310 against 0.342 with connected
components, 0.172 against 0.185 with watershed objects; docs/benchmarks.md).

With sparse masks (unlabelled pixels) the objects are cut where the labels stop, and
adapted Rand error on such fragments favours thresholds that join cells. Membrane IoU over
the labelled pixels is used there, as measured: on ISBI with 25 % of the rows
labelled it chose thresholds that scored held-out adapted Rand error 0.40 and 0.44 where
adapted Rand error chose 0.56 and 0.56 (two seeds). `--calibrate-by adapted_rand_error`
chooses by objects instead, and `v_rand` by the challenge's V^Rand of the cells predict
outputs: over 12 runs of 900 s it raised held-out V^Rand in all 12 (0.806 to 0.880) and the
challenge's pixel error in 11 (0.052 to 0.072), so it is a choice for cells, not the
default (docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from unet_keras.evaluation.challenge import section_sweep
from unet_keras.evaluation.scores import (
    SWEEP_THRESHOLDS,
    best_threshold,
    mean_scores,
    threshold_sweep,
)
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.masks import IGNORED, mask_to_labels
from unet_keras.io.sample import Sample
from unet_keras.record import Calibration
from unet_keras.saving import update_record

log = logging.getLogger(__name__)

METRIC = "pixel_error"
SPARSE_METRIC = "iou_0"
# Stored with the chosen threshold, beside the score it was chosen by.
REPORTED = ("pixel_error", "adapted_rand_error", "vi_split", "vi_merge")


def calibrate_threshold(
    model_path: str | os.PathLike, samples: Sequence[Sample], metric: str | None = None
) -> Calibration | None:
    """Stores in the model file the threshold that scores best on `samples`; returns it.

    `metric` defaults to `METRIC`, or `SPARSE_METRIC` when a mask has unlabelled pixels.
    Returns None, changing nothing, for multi-class models or without samples.
    """
    segmenter = Segmenter.from_path(model_path, threshold=0.5)
    if segmenter.classes != 1 or not samples:
        return None
    sweeps, sparse = [], False
    for sample in samples:
        truth = mask_to_labels(sample.mask, segmenter.mask_config, sample.name)
        sparse |= bool((truth == IGNORED).any())
        probabilities = segmenter.probabilities(sample.image, sample.name)[..., 0]
        sweep = threshold_sweep(probabilities, truth, SWEEP_THRESHOLDS)
        if metric == "v_rand":
            # The challenge's V^Rand after border thinning, of the cells predict will output:
            # p >= t there, p > t in the challenge, so t is moved down by one double's step.
            below = [np.nextafter(threshold, -np.inf) for threshold in SWEEP_THRESHOLDS]
            v_rands = section_sweep(probabilities, truth, below)[:, 0]
            sweep = [
                {**entry, "v_rand": float(v)} for entry, v in zip(sweep, v_rands, strict=True)
            ]
        sweeps.append(sweep)
    metric = metric or (SPARSE_METRIC if sparse else METRIC)
    by_threshold = [mean_scores(list(entries)) for entries in zip(*sweeps, strict=True)]
    best = best_threshold(by_threshold, metric)
    at_half = next(entry for entry in by_threshold if entry["threshold"] == 0.5)
    calibration = Calibration(
        value=best["threshold"],
        chosen_by=metric,
        images=tuple(sample.name for sample in samples),
        scores={key: best[key] for key in dict.fromkeys((metric, *REPORTED))},
        scores_at_half={key: at_half[key] for key in dict.fromkeys((metric, "pixel_error"))},
    )
    update_record(model_path, dataclasses.replace(segmenter.record, threshold=calibration))
    log.info(
        "threshold %.2f chosen on the %d validation image(s) by %s: %.4f (at 0.5: %.4f); "
        "stored in %s for predict, evaluate and export",
        best["threshold"], len(samples), metric, best[metric], at_half[metric], model_path,
    )  # fmt: skip
    return calibration

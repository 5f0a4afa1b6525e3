"""The settings of `unet-keras evaluate`. TF-free."""

from __future__ import annotations

import dataclasses

from unet_keras.inference.inference_settings import (
    MODEL_HELP,
    InferenceConfig,
    InstanceConfig,
)
from unet_keras.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(Settings):
    """`unet-keras evaluate`: score a model on labelled images with the ISBI 2012 metrics."""

    model: str = setting(help=MODEL_HELP)
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

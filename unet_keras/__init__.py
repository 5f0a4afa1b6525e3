"""unet-keras: the U-Net of Ronneberger, Fischer and Brox (2015) in Keras 3.

Importing the package is cheap: TensorFlow loads only when a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first use (PEP 562).
_EXPORTS = {
    "AugmentConfig": "unet_keras.config",
    "MaskConfig": "unet_keras.config",
    "ModelConfig": "unet_keras.config",
    "NormalizationConfig": "unet_keras.config",
    "DataError": "unet_keras.io.sample",
    "Sample": "unet_keras.io.sample",
    "load_dataset": "unet_keras.io.readers",
    "fit_normalization": "unet_keras.io.normalization",
    "infer_mask_config": "unet_keras.io.masks",
    "synthetic_em_images": "unet_keras.io.synthetic",
    "border_weight_map": "unet_keras.training.weights",
    "elastic_deform": "unet_keras.training.augment",
    "prepare_examples": "unet_keras.training.pipeline",
    "split_by_image": "unet_keras.training.pipeline",
    "training_dataset": "unet_keras.training.pipeline",
    "validation_dataset": "unet_keras.training.pipeline",
    "build_unet": "unet_keras.model",
    "check_input_size": "unet_keras.geometry",
    "context_margin": "unet_keras.geometry",
    "input_size_for_output": "unet_keras.geometry",
    "output_size": "unet_keras.geometry",
    "valid_input_size": "unet_keras.geometry",
    "WeightedCrossEntropy": "unet_keras.training.losses",
    "DiceLoss": "unet_keras.training.losses",
    "CombinedLoss": "unet_keras.training.losses",
    "IoU": "unet_keras.training.metrics",
    "Dice": "unet_keras.training.metrics",
    "PixelError": "unet_keras.training.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unet_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """Lists the public names next to the module's own."""
    return sorted(set(globals()) | set(__all__))

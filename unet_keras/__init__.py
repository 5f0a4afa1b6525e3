"""unet-keras: the U-Net of Ronneberger, Fischer and Brox (2015) in Keras 3.

Importing the package is cheap: TensorFlow loads only when a name that needs it is used.
"""

from __future__ import annotations

from unet_keras.lazy import lazy_names

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first use (PEP 562). In pipeline
# order: settings and the record, data, geometry, model, training, inference, evaluation,
# export, jobs.
_EXPORTS = {
    "AugmentConfig": "unet_keras.training.training_settings",
    "EnsembleConfig": "unet_keras.ensemble_settings",
    "EvaluateConfig": "unet_keras.evaluation.evaluation_settings",
    "ExportConfig": "unet_keras.exports.export_settings",
    "InferenceConfig": "unet_keras.inference.inference_settings",
    "MaskConfig": "unet_keras.record",
    "ModelConfig": "unet_keras.record",
    "ModelRecord": "unet_keras.record",
    "NormalizationConfig": "unet_keras.record",
    "PredictConfig": "unet_keras.inference.inference_settings",
    "ServeConfig": "unet_keras.server.server_settings",
    "TileSizes": "unet_keras.record",
    "TrainConfig": "unet_keras.training.training_settings",
    "Tiling": "unet_keras.inference.inference_settings",
    "DataError": "unet_keras.io.sample",
    "Sample": "unet_keras.io.sample",
    "load_dataset": "unet_keras.io.readers",
    "read_image": "unet_keras.io.readers",
    "read_pages": "unet_keras.io.readers",
    "write_image": "unet_keras.io.writers",
    "write_stack": "unet_keras.io.writers",
    "fit_normalization": "unet_keras.io.normalization",
    "normalize": "unet_keras.io.normalization",
    "infer_mask_config": "unet_keras.io.masks",
    "labels_to_mask": "unet_keras.io.masks",
    "mask_to_labels": "unet_keras.io.masks",
    "synthetic_em_images": "unet_keras.io.synthetic",
    "check_input_size": "unet_keras.geometry",
    "context_margin": "unet_keras.geometry",
    "input_size_for_output": "unet_keras.geometry",
    "output_size": "unet_keras.geometry",
    "receptive_reach": "unet_keras.geometry",
    "valid_input_size": "unet_keras.geometry",
    "build_unet": "unet_keras.model",
    "load_model": "unet_keras.saving",
    "read_record": "unet_keras.saving",
    "save_model": "unet_keras.saving",
    "pretrained": "unet_keras.saving",
    "build_ensemble": "unet_keras.ensemble",
    "make_ensemble": "unet_keras.ensemble",
    "border_weight_map": "unet_keras.training.weights",
    "elastic_deform": "unet_keras.training.augment",
    "prepare_data": "unet_keras.training.prepare",
    "prepare_examples": "unet_keras.training.prepare",
    "split_by_image": "unet_keras.training.prepare",
    "training_dataset": "unet_keras.training.pipeline",
    "validation_dataset": "unet_keras.training.pipeline",
    "CombinedLoss": "unet_keras.training.losses",
    "CrossEntropySkeletonRecall": "unet_keras.training.losses",
    "DiceLoss": "unet_keras.training.losses",
    "SkeletonRecallLoss": "unet_keras.training.losses",
    "WeightedCrossEntropy": "unet_keras.training.losses",
    "Dice": "unet_keras.training.metrics",
    "IoU": "unet_keras.training.metrics",
    "PixelError": "unet_keras.training.metrics",
    "fit": "unet_keras.training.fit",
    "Segmenter": "unet_keras.inference.segmenter",
    "segmentation_scores": "unet_keras.evaluation.scores",
    "calibrate_threshold": "unet_keras.evaluation.calibration",
    "export_model": "unet_keras.exports.savedmodel",
    "train": "unet_keras.workflows",
    "predict": "unet_keras.workflows",
    "evaluate": "unet_keras.workflows",
    "export": "unet_keras.workflows",
    "serve": "unet_keras.workflows",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

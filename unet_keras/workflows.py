"""Whole jobs above the stages: what each `unet-keras` command does, as one library call.

The command line only turns flags into the settings these take and prints what they
return, so a job run from Python gives what the command gives. Jobs that span stages
live here, not in a stage: training is `fit` and then the threshold chosen on the
validation images, which needs inference and evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unet_keras.ensemble_settings import EnsembleConfig
from unet_keras.evaluation.evaluation_settings import EvaluateConfig
from unet_keras.exports.export_settings import ExportConfig
from unet_keras.inference.inference_settings import InferenceConfig, PredictConfig
from unet_keras.io.data_settings import SyntheticConfig
from unet_keras.server.server_settings import ServeConfig
from unet_keras.training.training_settings import InspectConfig, TrainConfig

log = logging.getLogger(__name__)


def train(config: TrainConfig) -> dict[str, Any]:
    """Trains (or resumes) a run, then stores the threshold chosen on its validation images.

    Returns the run's summary, also written to `RUN/summary.json`. In a cluster, workers
    other than the chief return their own summary and leave calibration to the chief.
    """
    from unet_keras.training.kernels import load_tensorflow
    from unet_keras.training.prepare import prepare_data

    # Data first: it needs no TensorFlow, so bad data is refused in a second, not after
    # TensorFlow's five-second load.
    data = prepare_data(config)
    load_tensorflow(config.onednn, config.model.filters)  # before anything else loads it
    from unet_keras.evaluation.calibration import calibrate_threshold
    from unet_keras.training.distribute import is_chief
    from unet_keras.training.fit import fit
    from unet_keras.training.run_directory import RunDirectory

    summary = fit(config, data)
    if not is_chief():
        return summary
    run_dir = RunDirectory(summary["run_dir"])
    metric = None if config.calibrate_by == "auto" else config.calibrate_by
    calibration = calibrate_threshold(run_dir.file("best.keras"), data.validation_samples, metric)
    summary["threshold"] = None if calibration is None else calibration.to_dict()
    run_dir.write_json("summary.json", summary)
    return summary


def ensemble(config: EnsembleConfig) -> dict[str, Any]:
    """Writes the ensemble of `config.models` to `config.output`; returns its record."""
    from unet_keras.ensemble import make_ensemble

    return make_ensemble(config.models, config.output, config.threshold).to_dict()


def segmenter(model: str, inference: InferenceConfig) -> Any:
    """The `Segmenter` for a run directory, `.keras` file or export, run as `inference` says."""
    from unet_keras.inference.segmenter import Segmenter

    return Segmenter.from_path(model, **inference.segmenter_options())


def predict(config: PredictConfig, progress: bool = True) -> Any:
    """Segments an image, a folder or a TIFF stack into `config.output`; returns what was
    written and which inputs failed (`PredictionReport`).

    A Zarr or OME-Zarr volume is predicted block by block into a Zarr store, here or on a
    Dask cluster (`unet_keras.inference.volumes`); rerun, it completes an unfinished store.
    """
    from unet_keras.inference.predict import predict_path
    from unet_keras.io.ome_zarr import is_zarr

    if is_zarr(config.input):
        return predict_volume(config, progress)
    if config.probabilities == "zarr" or config.scheduler or config.workers > 1:
        raise ValueError(
            f"--input {config.input}: --probabilities zarr, --scheduler and --workers are for "
            "Zarr volumes (VOL.zarr)"
        )
    return predict_path(
        segmenter(config.model, config.inference),
        config.input,
        config.output,
        probabilities=config.probabilities,
        overlays=config.overlay,
        objects=config.objects,
        progress=progress,
    )


def predict_volume(config: PredictConfig, progress: bool = True) -> Any:
    """Segments a Zarr volume into the store `config.output` (`VolumeReport`)."""
    from unet_keras.inference.volumes import open_job
    from unet_keras.inference.volumes import predict_volume as run

    unsupported = {
        "--overlay": config.overlay,
        f"--probabilities {config.probabilities}": config.probabilities in ("png", "tiff"),
    }
    for flag, given in unsupported.items():
        if given:
            raise ValueError(
                f"--input {config.input}: {flag} is not available for Zarr volumes (masks, "
                "--probabilities zarr and --instances are)"
            )
    job = open_job(
        config.model,
        config.inference,
        config.input,
        config.output,
        config.probabilities == "zarr",
        config.block,
    )
    return run(
        segmenter(config.model, config.inference),
        job,
        scheduler=config.scheduler,
        workers=config.workers,
        retries=config.retries,
        objects=config.objects,
        progress=progress,
    )


def evaluate(config: EvaluateConfig, progress: bool = True) -> dict[str, Any]:
    """Scores a model on labelled images; returns the report (also written with figures to
    `config.output` when given)."""
    from unet_keras.evaluation.report import evaluate_path

    return evaluate_path(
        segmenter(config.model, config.inference),
        config.data,
        config.masks,
        output=config.output,
        sweep=config.sweep,
        objects=config.objects,
        ignore_value=config.ignore_value,
        progress=progress,
    )


def export(config: ExportConfig) -> Path:
    """Exports a model as the next (or the given) SavedModel version, a BioImage.IO
    package or an ONNX file; returns its folder or file."""
    tile, overlap, threshold = config.tiling.tile, config.tiling.overlap, config.threshold
    if config.format == "onnx":
        from unet_keras.exports.onnx_export import export_onnx

        return export_onnx(
            config.model, config.output, tile=tile, overlap=overlap, threshold=threshold
        )
    if config.format == "bioimageio":
        from unet_keras.exports.bioimageio import export_bioimageio
        from unet_keras.exports.bioimageio_card import PackageInfo

        info = PackageInfo(
            config.authors, config.maintainers, str(config.version or 1), config.git_repo
        )
        return export_bioimageio(
            config.model,
            config.output,
            tile=tile,
            overlap=overlap,
            threshold=threshold,
            test_image=config.test_image,
            info=info,
        )
    from unet_keras.exports.savedmodel import export_model

    return export_model(
        config.model,
        config.base_path,
        config.version,
        tile=tile,
        overlap=overlap,
        threshold=threshold,
        max_pixels=config.max_pixels,
        warmup=config.warmup,
    )


def serve(config: ServeConfig) -> int:
    """Serves exported versions like TensorFlow Serving until SIGTERM or SIGINT; returns
    the exit status (0 after a clean stop, 1 when it cannot start).

    A process's job: requests still computing `grace_seconds` after the signal end the
    process at once (see `unet_keras.server.serve.serve`).
    """
    from unet_keras.server.serve import serve as run_server

    return run_server(config, exit_when_stuck=True)


def synthetic(config: SyntheticConfig) -> Path:
    """Writes the embedded synthetic EM data set as `output/images` and `output/masks`."""
    from unet_keras.io.synthetic import synthetic_em_images
    from unet_keras.io.writers import write_image

    output = Path(config.output)
    for sample in synthetic_em_images(config.count, (config.size, config.size), config.seed):
        write_image(output / "images" / f"{sample.name}.png", sample.image)
        write_image(output / "masks" / f"{sample.name}.png", sample.mask)
    return output


def inspect(config: InspectConfig) -> dict[str, Any]:
    """Loads a data set as training would; reports sizes, dtype, classes and normalisation."""
    import numpy as np

    from unet_keras.io.masks import infer_mask_config
    from unet_keras.io.normalization import fit_normalization
    from unet_keras.io.readers import load_dataset

    samples = load_dataset(config.data, config.masks)
    labelled = [s.mask for s in samples if s.mask is not None]
    report: dict[str, Any] = {
        "samples": len(samples),
        "labelled": len(labelled),
        "sizes": sorted({f"{s.image.shape[0]}x{s.image.shape[1]}" for s in samples}),
        "channels": samples[0].image.shape[-1],
        "dtype": str(samples[0].image.dtype),
        "normalization": fit_normalization([s.image for s in samples]).to_dict(),
    }
    if labelled:
        mask = infer_mask_config(
            labelled, foreground=config.foreground, ignore_value=config.ignore_value
        )
        total = sum(m.size for m in labelled)
        report["mask"] = mask.to_dict()
        # Fractions of all mask pixels: with sparse annotations they add up to less than 1.
        report["class_fractions"] = {
            str(value): round(sum(int(np.sum(m == value)) for m in labelled) / total, 4)
            for value in mask.class_values
        }
        if config.ignore_value is not None:
            unlabelled = sum(int(np.sum(m == config.ignore_value)) for m in labelled)
            report["unlabelled_fraction"] = round(unlabelled / total, 4)
    return report

"""The `unet-keras` command: one subcommand per stage that a user runs by hand."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_keras.config import AugmentConfig, ModelConfig, TrainConfig

# Help for every training setting; the flags are generated from the config dataclasses,
# so a setting and its flag cannot drift apart.
TRAIN_HELP = {
    "data": "data folder (images/ + masks/), ISBI TIFF stack, or images folder with --masks; "
    "none: the embedded synthetic EM data set",
    "masks": "masks folder or label stack when not beside the images",
    "class_values": "mask pixel value of each class, e.g. 0 255 (ISBI: membrane 0, cells 255) "
    "or 255 0 (membrane drawn white); none: inferred from the masks",
    "mask_threshold": "binary masks only: values at or above it are the larger class value "
    "(for lossy masks)",
    "foreground": "with inferred binary masks: which value marks the cells "
    "(auto: the majority value, right for EM membrane masks)",
    "normalization": "intensity normalisation learnt from the training images: "
    "standardize (mean/std) or unit_range (divide by the dtype maximum)",
    "validation": "whole images held out for validation",
    "depth": "poolings in the U-Net",
    "filters": "filters of the first level, doubled at every level (paper: 64)",
    "padding": "valid: the paper's unpadded convolutions; same: output size = input size",
    "classes": "output channels; 1 (sigmoid) for binary masks; must match the masks",
    "batch_norm": "batch normalisation after every convolution",
    "dropout": "dropout rate at the end of the contracting path (0 disables it)",
    "tile": "input tile side in pixels (valid padding: the output is 184 px smaller at depth 4)",
    "elastic": "elastic deformation (random displacements on a coarse grid, as in the paper)",
    "elastic_grid": "control points of the displacement grid (rows columns)",
    "elastic_sigma": "standard deviation of the grid displacements in pixels",
    "elastic_backend": "tensorflow (in-graph, parallel) or elasticdeform (reference)",
    "interpolation": "image interpolation under deformation: linear or cubic",
    "flips": "random horizontal flips",
    "rotations": "random 90-degree rotations",
    "gamma": "random gamma: exp(uniform(-g, g)); 0 disables it",
    "contrast": "random contrast factor in [1 - c, 1 + c]; 0 disables it",
    "w0": "border weight map: weight of the gaps between cells",
    "sigma": "border weight map: width of the gaps in pixels",
    "loss": "cross_entropy (weighted by the border map), dice, or cross_entropy+dice",
    "optimizer": "adam, or sgd (the paper's, with --momentum)",
    "learning_rate": "initial learning rate",
    "momentum": "SGD momentum (paper: 0.99)",
    "schedule": "learning rate schedule: constant or cosine decay to 0",
    "batch_size": "tiles per step (global, over all replicas)",
    "epochs": "epochs to train",
    "steps_per_epoch": "training steps per epoch",
    "seed": "random seed: the same seed gives the same run",
    "max_time": "stop cleanly after this many seconds, keeping the best model so far",
    "run_dir": "directory for the model, logs and summary; rerun to resume",
    "strategy": "default, mirrored (GPUs of one machine) or multiworker (TF_CONFIG)",
    "precision": "float32, mixed_bfloat16 (CPUs with bf16) or mixed_float16 (GPUs)",
    "jit_compile": "compile the training step with XLA",
}
_NESTED = {"model": ModelConfig, "augment": AugmentConfig}
_DERIVED = {"in_channels"}  # taken from the data, never set by hand


def _flag_type(annotation: str) -> Any:
    """The argparse type for a field annotation such as 'float | None'."""
    for name, kind in (("float", float), ("int", int), ("bool", bool)):
        if name in annotation:
            return kind
    return str


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, section: str = "") -> None:
    """Adds one flag per field of a config dataclass; unset flags stay out of the result."""
    for field in dataclasses.fields(cls):
        if field.name in _NESTED:
            _add_config_flags(parser, _NESTED[field.name], field.name)
            continue
        if field.name in _DERIVED:
            continue
        default = field.default
        if section:
            default = getattr(getattr(TrainConfig(), section), field.name)
        options: dict[str, Any] = {
            "dest": f"{section}.{field.name}" if section else field.name,
            "metavar": field.name.upper(),
            "default": argparse.SUPPRESS,
            "help": f"{TRAIN_HELP[field.name]} (default: {default})",
        }
        kind = _flag_type(str(field.type))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
            del options["metavar"]
        elif "tuple" in str(field.type):
            options.update(nargs="+", type=int)
        else:
            options["type"] = kind
        parser.add_argument("--" + field.name.replace("_", "-"), **options)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Builds the TrainConfig: defaults, then the --config file, then the flags given."""
    values: dict[str, Any] = {}
    if args.config:
        values = _read_config_file(Path(args.config))
    for key, value in vars(args).items():
        if key in ("config", "command", "run"):
            continue
        section, _, name = key.rpartition(".")
        target = values.setdefault(section, {}) if section else values
        target[name] = value
    return TrainConfig.from_dict(values)


def _read_config_file(path: Path) -> dict[str, Any]:
    """Reads a JSON or YAML settings file (same names as the flags, with underscores)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings")
    return values


def _train(args: argparse.Namespace) -> None:
    """Trains a U-Net, chooses its threshold on the validation images, prints the results."""
    from unet_keras.evaluation.calibration import calibrate_threshold
    from unet_keras.training.distribute import is_chief
    from unet_keras.training.fit import RunDirectory, load_samples, run

    config = train_config(args)
    summary = run(config)
    if not is_chief():
        print(f"worker done; the run's files are the chief's, in {config.run_dir}")
        return
    validation = [s for s in load_samples(config) if s.name in summary["validation_images"]]
    run_dir = RunDirectory(summary["run_dir"])
    summary["threshold"] = calibrate_threshold(run_dir.file("best.keras"), validation)
    run_dir.write_json("summary.json", summary)
    print(json.dumps(summary, indent=2))
    print(f"best model: {run_dir.file('best.keras')}")


def _synthetic(args: argparse.Namespace) -> None:
    """Writes the embedded synthetic data set as DIR/images and DIR/masks PNG pairs."""
    from unet_keras.io.synthetic import synthetic_em_images
    from unet_keras.io.writers import write_image

    output = Path(args.output)
    for sample in synthetic_em_images(args.count, (args.size, args.size), args.seed):
        write_image(output / "images" / f"{sample.name}.png", sample.image)
        write_image(output / "masks" / f"{sample.name}.png", sample.mask)
    print(f"wrote {args.count} image/mask pairs to {output}/images and {output}/masks")


def _inspect(args: argparse.Namespace) -> None:
    """Loads a data set as training would and reports what was found, as JSON."""
    import numpy as np

    from unet_keras.io.masks import infer_mask_config
    from unet_keras.io.normalization import fit_normalization
    from unet_keras.io.readers import load_dataset

    samples = load_dataset(args.data, args.masks)
    labelled = [s for s in samples if s.mask is not None]
    report = {
        "samples": len(samples),
        "labelled": len(labelled),
        "sizes": sorted({f"{s.image.shape[0]}x{s.image.shape[1]}" for s in samples}),
        "channels": samples[0].image.shape[-1],
        "dtype": str(samples[0].image.dtype),
        "normalization": fit_normalization([s.image for s in samples]).to_dict(),
    }
    if labelled:
        masks = [s.mask for s in labelled]
        config = infer_mask_config(masks, foreground=args.foreground)
        total = sum(m.size for m in masks)
        report["mask"] = config.to_dict()
        report["class_fractions"] = {
            str(value): round(sum(int(np.sum(m == value)) for m in masks) / total, 4)
            for value in config.class_values
        }
    print(json.dumps(report, indent=2))


def _segmenter(args: argparse.Namespace) -> Any:
    """The Segmenter that --model and the inference flags describe."""
    from unet_keras.inference.segmenter import Segmenter

    return Segmenter.from_path(
        args.model,
        tile=args.tile,
        batch_size=args.batch_size,
        overlap=args.overlap,
        tta=args.tta,
        threshold=args.threshold,
    )


def _predict(args: argparse.Namespace) -> int:
    """Segments images; exits 1 when any input could not be processed."""
    from unet_keras.inference.predict import predict_path

    report = predict_path(
        _segmenter(args),
        args.input,
        args.output,
        probabilities=args.probabilities,
        overlays=args.overlay,
        progress=True,
    )
    print(f"wrote {len(report.written)} files to {args.output}")
    if report.failed:
        print(f"{len(report.failed)} input(s) failed:", file=sys.stderr)
        for name, reason in report.failed:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    """Scores a model on labelled images and prints the mean scores as JSON."""
    from unet_keras.inference.predict import evaluate_path

    report = evaluate_path(
        _segmenter(args),
        args.data,
        args.masks,
        output=args.output,
        sweep=args.sweep,
        progress=True,
    )
    summary = {key: report[key] for key in ("threshold", "tta", "mean")}
    if "best_threshold" in report:
        summary["best_threshold"] = report["best_threshold"]
    print(json.dumps(summary, indent=2))
    if args.output:
        print(f"per-image scores and figures: {args.output}")


def _export(args: argparse.Namespace) -> None:
    """Exports a model as the next SavedModel version; prints its directory last."""
    from unet_keras.serving.export import export_model

    options = {"tile": args.tile, "threshold": args.threshold, "max_pixels": args.max_pixels}
    target = export_model(args.model, args.base_path, args.version, **options)
    print(f"exported {args.model} for TensorFlow Serving; version directory:")
    print(target)


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by predict and evaluate: the model and how it tiles."""
    parser.add_argument(
        "--model", required=True, help="model: a .keras file or a training run directory"
    )
    parser.add_argument(
        "--tile",
        type=int,
        help="input tile side in pixels (default: 700 for valid padding at depth 4, 512 for same)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="tiles per model call")
    parser.add_argument(
        "--overlap",
        type=int,
        help="same padding: overlap of neighbouring tiles in pixels "
        "(default: a quarter of the tile)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the 8 flips and rotations (8x slower)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="one-channel models: probability at or above which a pixel is foreground "
        "(default: the one chosen on the validation images after training, else 0.5)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `unet-keras`, every flag with its default in --help."""
    parser = argparse.ArgumentParser(
        prog="unet-keras",
        description="U-Net (Ronneberger et al. 2015) for biomedical image segmentation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a U-Net (resumes when the run directory holds an unfinished run)",
        description="Train a U-Net with model.fit. Settings come from the defaults, then "
        "--config, then the flags given.",
    )
    train.add_argument("--config", help="JSON or YAML file of settings (flag names, underscored)")
    _add_config_flags(train, TrainConfig)
    train.set_defaults(run=_train)

    synthetic = commands.add_parser(
        "synthetic",
        help="write the embedded synthetic EM data set as image/mask folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synthetic.add_argument("output", help="folder to create images/ and masks/ in")
    synthetic.add_argument("--count", type=int, default=24, help="number of image/mask pairs")
    synthetic.add_argument("--size", type=int, default=512, help="side length in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed")
    synthetic.set_defaults(run=_synthetic)

    inspect = commands.add_parser(
        "inspect",
        help="load a data set as training would and report sizes, classes, normalisation",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    inspect.add_argument("data", help="data folder (images/ + masks/), image folder or TIFF stack")
    inspect.add_argument("--masks", help="mask folder or label stack, if not found beside data")
    inspect.add_argument(
        "--foreground",
        choices=("auto", "bright", "dark"),
        default="auto",
        help="which mask value marks the objects (auto: the majority value, as in EM)",
    )
    inspect.set_defaults(run=_inspect)

    predict = commands.add_parser(
        "predict",
        help="segment images of any size (overlap-tile), writing masks in the training "
        "masks' convention",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_inference_flags(predict)
    predict.add_argument(
        "--input", required=True, help="image file, multi-page TIFF stack, or folder of images"
    )
    predict.add_argument("--output", required=True, help="folder for the masks (DIR/<stem>.png)")
    predict.add_argument(
        "--probabilities",
        choices=("png", "tiff"),
        help="also write probability maps: 16-bit PNG or float32 TIFF",
    )
    predict.add_argument(
        "--overlay", action="store_true", help="also write the images with predicted outlines"
    )
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a model on labelled images: pixel error, IoU, Dice, adapted Rand, VI",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_inference_flags(evaluate)
    evaluate.add_argument(
        "--data", required=True, help="data folder (images/ + masks/) or ISBI TIFF stack"
    )
    evaluate.add_argument("--masks", help="masks folder or label stack, if not beside the images")
    evaluate.add_argument("--output", help="folder for evaluation.json and one figure per image")
    evaluate.add_argument(
        "--sweep",
        action="store_true",
        help="also score thresholds 0.1..0.9 and report the best by adapted Rand error",
    )
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export",
        help="export a model as a SavedModel version that TensorFlow Serving serves as is",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument(
        "--model", required=True, help="model: a .keras file or a training run directory"
    )
    export.add_argument(
        "--base-path", required=True, help="model base path; versions go to BASE/<n>/"
    )
    export.add_argument(
        "--version", type=int, help="version number (default: one more than the latest)"
    )
    export.add_argument(
        "--tile",
        type=int,
        help="largest input tile the graph runs at once (default: 700 for valid padding "
        "at depth 4); bounds the server's memory per request",
    )
    export.add_argument(
        "--threshold",
        type=float,
        help="one-channel models: probability at or above which the mask is foreground "
        "(default: the one chosen on the validation images after training, else 0.5)",
    )
    export.add_argument(
        "--max-pixels",
        type=int,
        default=16384 * 16384,
        help="largest image (H x W) a request may carry; larger ones get INVALID_ARGUMENT",
    )
    export.set_defaults(run=_export)

    # Imports no TensorFlow: the server loads it only when it runs.
    from unet_keras.serving.server import add_serve_parser

    add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `unet-keras`; bad input prints one clear line and returns exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        status = args.run(args)
    except ModuleNotFoundError as error:
        # A client-only install (unet-keras[client]) lacks TensorFlow and the rest.
        print(
            f"unet-keras {args.command}: error: {error}; this command needs the full "
            "install: pip install 'unet-keras[full]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError) as error:
        print(f"unet-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())

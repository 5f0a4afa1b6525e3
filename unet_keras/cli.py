"""The `unet-keras` command: one subcommand per stage that a user runs by hand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _synthetic(args: argparse.Namespace) -> None:
    """Writes the embedded synthetic data set as DIR/images and DIR/masks PNG pairs."""
    from unet_keras.data.synthetic import synthetic_em_images
    from unet_keras.data.writers import write_image

    output = Path(args.output)
    for sample in synthetic_em_images(args.count, (args.size, args.size), args.seed):
        write_image(output / "images" / f"{sample.name}.png", sample.image)
        write_image(output / "masks" / f"{sample.name}.png", sample.mask)
    print(f"wrote {args.count} image/mask pairs to {output}/images and {output}/masks")


def _inspect(args: argparse.Namespace) -> None:
    """Loads a data set as training would and reports what was found, as JSON."""
    import numpy as np

    from unet_keras.data import fit_normalization, infer_mask_config, load_dataset

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `unet-keras`, every flag with its default in --help."""
    parser = argparse.ArgumentParser(
        prog="unet-keras",
        description="U-Net (Ronneberger et al. 2015) for biomedical image segmentation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `unet-keras`; bad input prints one clear line and returns exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:
        print(f"unet-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning the shipped model against training from scratch, on data it never saw.

The data: ISBI 2012 sections 20-23 (held out of the shipped model's training), rescaled by
`--scale` and with their contrast changed (gamma, then squeezed around the mean), as a
new microscope or preparation would give. Both arms train `--max-time` seconds on sections
20 and 21 with the same settings, one from `--init-from isbi2012-membranes`, one from
random weights; both are scored on sections 22 and 23. The shipped model as it is (no
training) is scored too.

    .venv/bin/python bench/finetune.py [--max-time 300] [--append]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train"
TRAIN, TEST = ("20", "21"), ("22", "23")


def shifted_domain(folder: Path, scale: float, gamma: float, contrast: float) -> Path:
    """Sections 20-23 rescaled and with another contrast, as images/ and masks/ in `folder`."""
    from PIL import Image

    from unet_keras.io.readers import read_image, read_mask
    from unet_keras.io.writers import write_image

    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for name in TRAIN + TEST:
        image = read_image(DATA / "images" / f"{name}.png")[..., 0].astype(np.float64) / 255
        image = image**gamma
        image = np.clip(image.mean() + contrast * (image - image.mean()), 0, 1)
        size = round(image.shape[1] * scale), round(image.shape[0] * scale)
        image = Image.fromarray((image * 255).round().astype(np.uint8)).resize(size, Image.BICUBIC)
        mask = Image.fromarray(read_mask(DATA / "masks" / f"{name}.png").astype(np.uint8))
        write_image(folder / "images" / f"{name}.png", np.asarray(image))
        write_image(folder / "masks" / f"{name}.png", np.asarray(mask.resize(size, Image.NEAREST)))
    return folder


def subset(source: Path, folder: Path, names: tuple[str, ...]) -> Path:
    """A data folder of links to the `names` sections of `source`."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
        for name in names:
            (folder / kind / f"{name}.png").symlink_to(source / kind / f"{name}.png")
    return folder


def scores(model: str | Path, test: Path) -> dict:
    """Mean held-out scores at threshold 0.5 (no validation sections to choose one)."""
    from unet_keras.evaluation.report import evaluate_path
    from unet_keras.inference.segmenter import Segmenter

    return evaluate_path(Segmenter.from_path(model, threshold=0.5), test)["mean"]


def main() -> None:
    """Makes the data, trains both arms, scores and reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-time", type=float, default=300)
    parser.add_argument("--scale", type=float, default=1.5)
    parser.add_argument("--gamma", type=float, default=0.6)
    parser.add_argument("--contrast", type=float, default=0.6)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    from common import publish

    work = Path(tempfile.mkdtemp(prefix="finetune_"))
    shifted = shifted_domain(work / "shifted", args.scale, args.gamma, args.contrast)
    train, test = subset(shifted, work / "train", TRAIN), subset(shifted, work / "test", TEST)
    arms = {"fine-tuned from isbi2012-membranes": ["--init-from", "isbi2012-membranes"]}
    arms["from scratch"] = []
    results = {
        "isbi2012-membranes as shipped (no training)": (scores("isbi2012-membranes", test), None)
    }
    for index, (name, flags) in enumerate(arms.items()):
        run = work / f"run{index}"
        command = [
            sys.executable, str(ROOT / "train_keras.py"), "--data", str(train),
            "--run-dir", str(run), "--max-time", str(args.max_time), "--validation", "0", *flags,
        ]  # fmt: skip
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        summary = json.loads((run / "summary.json").read_text())
        results[name] = (scores(run, test), summary)
    rows = []
    for name, (score, summary) in results.items():
        trained = "" if summary is None else f"{summary['epochs']} ({summary['wall_seconds']} s)"
        rows.append(
            f"| {name} | {trained} | {score['pixel_error']:.4f} | {score['iou_0']:.3f} | "
            f"{score['adapted_rand_error']:.4f} |"
        )
    publish(
        f"Fine-tuning the shipped model against training from scratch, {args.max_time:.0f} s",
        f"Data neither arm's starting point saw: ISBI 2012 sections 20-23 (held out of the "
        f"shipped model's training), rescaled {args.scale}x, gamma {args.gamma}, contrast "
        f"x{args.contrast} around the mean. Both arms train on 20 and 21 with the defaults "
        f"and no validation sections (so threshold 0.5), and are scored on 22 and 23 (mean "
        f"per section; membrane IoU is class 0's; objects by connected components).",
        ["model", "epochs (s)", "pixel error", "membrane IoU", "adapted Rand"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

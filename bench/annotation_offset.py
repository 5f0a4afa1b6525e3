"""How far ISBI 2012's masks sit from the membranes they trace, and from a model's output.

Two measurements, both of a sub-pixel shift:

- the masks against their images: the shift of each section's membrane mask under which
  the image is darkest beneath it (EM membranes are dark), found on a 1 px grid over all
  24 sections and refined by a parabola through the best shift and its neighbours;
- a trained model against the held-out masks (`--run-dir`, as many as given): the shift of
  its probability maps (linear interpolation, 0.25 px steps) that gives the lowest pixel
  error at its stored threshold, on the validation sections it was calibrated on and on
  the held-out sections 20-23.

A model trained with quarter turns cannot learn the first offset (it sees it turned every
way) and shows it as the second; README's Augmentation section says why rotations are off.

    .venv/bin/python bench/annotation_offset.py [--run-dir RUN ...] [--append]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import publish
from isbi_accuracy import DATA, HELD_OUT

SHIFTS = np.arange(-1.0, 1.01, 0.25)


def _peak(values: np.ndarray, index: int) -> float:
    """The vertex of the parabola through values[index - 1 : index + 2], as an offset."""
    left, middle, right = values[index - 1 : index + 2]
    return index + 0.5 * (left - right) / (left - 2 * middle + right)


def mask_offset(reach: int = 3) -> tuple[float, float]:
    """(rows, columns) by which the masks must move to lie best over the dark membranes."""
    from unet_keras.io.readers import read_image, read_mask

    steps = range(-reach, reach + 1)
    darkness = np.zeros((len(steps), len(steps)))
    for image_path in sorted((DATA / "images").glob("*.png")):
        image = read_image(image_path)[..., 0].astype(float)
        dark = (image.mean() - image) / image.std()
        membrane = read_mask(DATA / "masks" / image_path.name) == 0
        inner = (slice(2 * reach, -2 * reach),) * 2  # away from the wrapped-around border
        for i, dy in enumerate(steps):
            for j, dx in enumerate(steps):
                moved = np.roll(membrane, (dy, dx), axis=(0, 1))[inner]
                darkness[i, j] += dark[inner][moved].mean()
    i, j = np.unravel_index(darkness.argmax(), darkness.shape)
    return _peak(darkness[:, j], i) - reach, _peak(darkness[i], j) - reach


def prediction_errors(run_dir: Path, names: list[str]) -> np.ndarray:
    """Pixel error of the run's maps on `names` shifted by each (SHIFTS[i], SHIFTS[j])."""
    from scipy import ndimage

    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.io.readers import read_image, read_mask

    segmenter = Segmenter.from_path(run_dir)
    errors, pixels = np.zeros((len(SHIFTS), len(SHIFTS))), 0
    for name in names:
        cells = segmenter.probabilities(read_image(DATA / "images" / f"{name}.png"))[..., 0]
        truth = read_mask(DATA / "masks" / f"{name}.png") > 0
        for i, dy in enumerate(SHIFTS):
            for j, dx in enumerate(SHIFTS):
                moved = ndimage.shift(cells, (dy, dx), order=1, mode="nearest")
                errors[i, j] += ((moved >= segmenter.threshold) != truth).sum()
        pixels += truth.size
    return errors / pixels


def model_row(run_dir: Path) -> str:
    """A table row: the run's pixel error unshifted and at its best shift, on both sets."""
    import json

    from unet_keras.saving import read_record
    from unet_keras.training.training_settings import AugmentConfig

    record = read_record(run_dir)
    # From the run's settings: records written before they named their symmetries say "all".
    augment = json.loads((run_dir / "config.json").read_text())["augment"]
    symmetries = AugmentConfig.from_dict(augment).symmetries
    if record.threshold is None:
        raise SystemExit(f"{run_dir}: no threshold was chosen on validation images after training")
    validation = [Path(name).stem for name in record.threshold.images]
    cells = []
    for names in (validation, list(HELD_OUT)):
        errors = prediction_errors(run_dir, names)
        i, j = np.unravel_index(errors.argmin(), errors.shape)
        centre = len(SHIFTS) // 2
        cells += [
            f"{errors[centre, centre]:.4f}",
            f"{errors[i, j]:.4f} at ({SHIFTS[i]:+.2f}, {SHIFTS[j]:+.2f})",
        ]
    return f"| {run_dir.name} | {symmetries} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, nargs="*", default=[], help="trained runs")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    down, right = mask_offset()
    publish(
        "Where ISBI 2012's masks sit: against the images, and against trained models",
        f"All 24 sections: the membrane masks lie best over the images' dark pixels when "
        f"moved {down:+.2f} px down and {right:+.2f} px right (a parabola through the best "
        "whole-pixel shift and its neighbours). Each run below: pixel error at its stored "
        "threshold, as predicted and with its probability maps moved by the (down, right) "
        "shift, in 0.25 px steps within 1 px, that scores best on those sections; "
        "validation: the 2 sections its threshold was chosen on; held out: 20-23. "
        "Symmetries: the flips and quarter turns it was trained with.",
        [
            "run",
            "symmetries",
            "validation",
            "validation, best shift",
            "held out",
            "held out, best shift",
        ],
        [model_row(run_dir) for run_dir in args.run_dir],
        args.append,
    )


if __name__ == "__main__":
    main()

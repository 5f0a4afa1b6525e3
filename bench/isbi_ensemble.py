"""The challenge's scores of trained runs on held-out ISBI 2012 sections, alone and as an
ensemble: the mean of their cell probability maps, as nnU-Net averages its folds.

    .venv/bin/python bench/isbi_ensemble.py RUN_DIR RUN_DIR [...] [--append]

Each RUN_DIR is a run of `bench/isbi_accuracy.py --run-dir`, trained on sections 00-19.
Rows: each run alone (what its own table says), every pair, and all of them together;
V^Rand, V^Info and pixel error (1 - F), each at its best threshold, no TTA.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from common import publish
from isbi_accuracy import DATA, HELD_OUT, _read


def main() -> None:
    """Predicts the held-out sections with every run once, then scores the averages."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    from unet_keras.evaluation.challenge import challenge_scores
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.io.readers import read_image

    truths = [(_read(DATA / "masks" / f"{name}.png") == 255).astype(np.int32) for name in HELD_OUT]
    images = [read_image(DATA / "images" / f"{name}.png") for name in HELD_OUT]
    maps = {}
    for run in args.runs:
        segmenter = Segmenter.from_path(run)
        maps[run.name] = [segmenter.probabilities(image)[..., -1] for image in images]
    groups = [(name,) for name in maps]
    if len(maps) > 2:
        groups += list(itertools.combinations(maps, 2))
    groups.append(tuple(maps))
    rows = []
    for group in groups:
        members = zip(*(maps[name] for name in group), strict=True)
        averaged = [np.mean(sections, axis=0) for sections in members]
        scores = challenge_scores(averaged, truths)
        cells = [
            f"{scores[key]['value']:.4f} (at {scores[key]['threshold']:.1f})"
            for key in ("v_rand", "v_info", "isbi_pixel_error")
        ]
        rows.append(f"| {' + '.join(group)} | " + " | ".join(cells) + " |")
    publish(
        "ISBI 2012 runs alone and as an ensemble of their probability maps",
        f"Held-out sections {', '.join(HELD_OUT)}; the challenge's scores at their best "
        "thresholds, no TTA; an ensemble is the mean of its runs' cell probabilities.",
        ["runs", "V^Rand", "V^Info", "pixel error (1 - F)"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

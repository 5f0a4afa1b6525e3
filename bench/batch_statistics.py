"""Batch normalisation's statistics for a run's averaged weights: the challenge's scores on
held-out ISBI 2012 sections with the statistics training left, and with those training now
gathers for the averaged weights (`unet_keras.training.batch_statistics`).

    .venv/bin/python bench/batch_statistics.py RUN_DIR [RUN_DIR ...] [--save DIR] [--append]

Each RUN_DIR is a run of `bench/isbi_accuracy.py --run-dir` with weight averaging and batch
normalisation, trained on sections 00-19 before training gathered the statistics itself:
its best.keras holds the averaged weights with the trained weights' statistics. Scores:
V^Rand, V^Info and pixel error (1 - F) on 20-23, each at its best threshold, no TTA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import publish
from isbi_accuracy import DATA, HELD_OUT, _read


def main() -> None:
    """Scores every run's kept model as it is, then with statistics gathered anew."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--save", type=Path, help="folder for the models, RUN_NAME.keras")
    args = parser.parse_args()

    from unet_keras.evaluation.challenge import challenge_scores
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.io.readers import read_image
    from unet_keras.saving import load_model, save_model
    from unet_keras.training.batch_statistics import refit_batch_statistics, statistics_batches
    from unet_keras.training.prepare import prepare_data
    from unet_keras.training.training_settings import TrainConfig

    truths = [(_read(DATA / "masks" / f"{name}.png") == 255).astype(np.int32) for name in HELD_OUT]
    images = [read_image(DATA / "images" / f"{name}.png") for name in HELD_OUT]

    def scores(model, record) -> str:
        segmenter = Segmenter.from_model(model, record)
        maps = [segmenter.probabilities(image)[..., -1] for image in images]
        found = challenge_scores(maps, truths)
        keys = ("v_rand", "v_info", "isbi_pixel_error")
        return " / ".join(f"{found[key]['value']:.4f}" for key in keys)

    rows = []
    for run in args.runs:
        config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        model, record = load_model(run / "best.keras")
        before = scores(model, record)
        started = time.perf_counter()
        refit_batch_statistics(model, statistics_batches(config, prepare_data(config)))
        seconds = time.perf_counter() - started
        rows.append(f"| {run.name} | {before} | {scores(model, record)} | {seconds:.0f} |")
        if args.save:
            save_model(model, args.save / f"{run.name}.keras", record)
    publish(
        "Batch normalisation statistics for the averaged weights, ISBI 2012 held out",
        f"Held-out sections {', '.join(HELD_OUT)}; V^Rand / V^Info / 1 - F at the challenge's "
        "best thresholds, no TTA; the kept model with the statistics training left, then with "
        "those `refit_batch_statistics` gathers (as training now does); seconds: data "
        "preparation and gathering.",
        ["run", "as trained", "statistics gathered", "s"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

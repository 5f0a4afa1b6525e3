"""Training pipeline (all augmentation on) against the training step that consumes it.

For each model configuration, on 572x572 input tiles of 20 ISBI sections (synthetic data
when the ISBI folder is absent), measures in one process:
- the pipeline alone: training tiles per second, every augmentation on;
- the training step alone: `train_on_batch` on one fixed batch, images per second;
- `model.fit` fed by the pipeline against `model.fit` fed by one cached batch, which shows
  what the pipeline costs training when both share the cores.

    .venv/bin/python bench/pipeline_throughput.py [--filters 64 16] [--append]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf
from common import publish

import unet_keras as uk
from unet_keras.record import ModelConfig
from unet_keras.training.fit import compiled_model
from unet_keras.training.training_settings import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012" / "train"
TILE = 572


def _examples() -> tuple[list, str]:
    """20 prepared training examples and a description of where they came from."""
    if ISBI.exists():
        samples, source = uk.load_dataset(ISBI)[:20], "20 ISBI 2012 sections"
    else:
        samples, source = uk.synthetic_em_images(20), "20 synthetic sections"
    normalization = uk.fit_normalization([s.image for s in samples])
    masks = uk.infer_mask_config([s.mask for s in samples])
    return uk.prepare_examples(samples, masks, normalization), source


def _median_rate(step, count: int, repeats: int) -> float:
    """Median images/s over `repeats` timings of `count` images each, after a warm-up."""
    step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = 0
        while done < count:
            done += step()
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def pipeline_rate(examples, output: int, repeats: int) -> float:
    """Training tiles per second from the full pipeline, all augmentation on."""
    config = uk.AugmentConfig(gamma=0.1, contrast=0.1)
    iterator = iter(uk.training_dataset(examples, TILE, output, 8, config, seed=0))

    def step():
        next(iterator)
        return 8

    return _median_rate(step, 80, repeats)


def train_rates(examples, filters: int, output: int, steps: int, repeats: int):
    """(train_on_batch images/s, fit on the pipeline images/s, fit on one cached batch)."""
    config = TrainConfig(model=ModelConfig(filters=filters), optimizer="sgd", learning_rate=0.01)
    model = compiled_model(config, config.model)
    pipeline = uk.training_dataset(examples, TILE, output, 1, uk.AugmentConfig(), seed=0)
    batch = next(iter(pipeline))

    def one_step():
        model.train_on_batch(*batch)
        return 1

    alone = _median_rate(one_step, steps, repeats)
    cached = tf.data.Dataset.from_tensors(batch).repeat()

    def fit_rate(dataset):
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
            rates.append(steps / (time.perf_counter() - start))
        return statistics.median(rates)

    return alone, fit_rate(pipeline), fit_rate(cached)


def main() -> None:
    """Measures every configuration and prints (and optionally appends) a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--steps", type=int, default=6, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (median)")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    examples, source = _examples()
    output = uk.output_size(TILE)
    tiles = pipeline_rate(examples, output, args.repeats)
    print(f"pipeline: {tiles:.1f} tiles/s", flush=True)
    rows = []
    for filters in args.filters:
        alone, fed, cached = train_rates(examples, filters, output, args.steps, args.repeats)
        rows.append(
            f"| {filters} | {tiles:.1f} | {alone:.2f} | {tiles / alone:.0f}x | "
            f"{fed:.2f} | {cached:.2f} | {100 * (1 - fed / cached):+.0f} % |"
        )
        print(rows[-1], flush=True)

    publish(
        "Training pipeline against the training step",
        f"Valid padding, depth 4, {TILE}x{TILE} input tiles ({output}x{output} output), "
        f"batch 1, {source}, every augmentation on (elastic linear, flips, rotations, gamma, "
        "contrast); SGD, weighted cross-entropy, no XLA, as the training run compiles it. "
        f"`bench/pipeline_throughput.py --steps {args.steps} --repeats {args.repeats}`; "
        "medians.",
        [
            "filters", "pipeline tiles/s", "train step img/s", "pipeline / step",
            "fit on pipeline img/s", "fit on cached batch img/s", "slowdown from the pipeline",
        ],
        rows,
        args.append,
    )  # fmt: skip


if __name__ == "__main__":
    main()

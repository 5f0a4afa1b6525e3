"""Elastic deformation of a 512x512 image + mask: in-graph TensorFlow against elasticdeform.

Each configuration runs in a fresh process pinned with `taskset` to 1 core and to 2 cores.
elasticdeform gets its best case on N cores: N worker processes (it holds the GIL, so
threads would not help). The in-graph version runs as the training pipeline runs it: a
`tf.data` map with AUTOTUNE parallel calls. Two in-graph figures are reported:
"per call" starts from the raw image on every call, as elasticdeform must (for cubic: the
B-spline prefilter); "pipeline" reads the coefficients that the training pipeline caches
once per image (for linear the two are the same work).

    .venv/bin/python bench/elastic_deform.py [--seconds 3] [--repeats 5] [--append]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import publish

ROOT = Path(__file__).resolve().parents[1]
ISBI_IMAGE = ROOT.parent / "shared" / "data" / "isbi2012" / "train" / "images" / "00.png"
SIZE = 512
INTERPOLATIONS = {"linear": 1, "cubic": 3}


def _image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    """A real ISBI section when present, else a synthetic one; scaled to [0, 1]."""
    if ISBI_IMAGE.exists():
        from PIL import Image

        image = np.asarray(Image.open(ISBI_IMAGE), np.float32)[:SIZE, :SIZE] / 255
    else:
        from unet_keras.io.synthetic import synthetic_em_images

        image = synthetic_em_images(1, (SIZE, SIZE))[0].image[..., 0].astype(np.float32) / 255
    return image, (image > 0.5).astype(np.float32)


def _rate(step, seconds: float, repeats: int) -> float:
    """Median images/s of `step()` (which returns how many images it did) over repeats."""
    step()  # warm-up: tracing, thread pools
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += step()
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def _elasticdeform_loop(args) -> int:
    """One worker process: deforms for `seconds`, returns the count."""
    import elasticdeform

    image, mask, order, seconds = args
    rng = np.random.default_rng(os.getpid())
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        grid = rng.normal(0, 10, (2, 3, 3))
        elasticdeform.deform_grid([image, mask], grid, order=[order, 0], mode="mirror")
        done += 1
    return done


def measure_elasticdeform(cores: int, order: int, seconds: float, repeats: int) -> float:
    """Median images/s of elasticdeform over `cores` worker processes."""
    image, mask = _image_and_mask()
    rates = []
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_elasticdeform_loop, [(image, mask, order, 0.2)] * cores)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            counts = pool.map(_elasticdeform_loop, [(image, mask, order, seconds)] * cores)
            rates.append(sum(counts) / (time.perf_counter() - start))
    return statistics.median(rates)


def _single_threaded_elements():
    """tf.data options as the training pipeline sets them (one thread per element)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return options


def measure_tensorflow(interpolation: str, cached: bool, seconds: float, repeats: int) -> float:
    """Median images/s of the in-graph deformation of image + mask in a tf.data map."""
    import tensorflow as tf

    from unet_keras.training import augment

    image, mask = _image_and_mask()
    pair = tf.constant(np.stack([image, mask], axis=-1))

    def coefficients(pair):
        if interpolation == "linear":
            return pair
        return tf.concat([augment.spline_prefilter(pair[..., :1]), pair[..., 1:]], -1)

    cached = coefficients(pair) if cached else None

    def deform(index):
        seed = tf.stack([index, tf.constant(0, tf.int64)])
        grid = augment.random_displacement_grid(seed, (3, 3), 10.0)
        source = coefficients(pair) if cached is None else cached
        moved = augment.deform(source, grid, (interpolation, "nearest"))
        return tf.reduce_sum(moved, axis=(0, 1))

    batch = 32
    dataset = (
        tf.data.Dataset.range(10**9)
        .map(deform, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch)
        .prefetch(2)
        .with_options(_single_threaded_elements())
    )
    iterator = iter(dataset)

    def step():
        next(iterator)
        return batch

    return _rate(step, seconds, repeats)


def _worker(args) -> None:
    """Runs one measurement (inside a pinned process) and prints it as JSON."""
    cores = len(os.sched_getaffinity(0))
    if args.backend == "elasticdeform":
        rate = measure_elasticdeform(
            cores, INTERPOLATIONS[args.interpolation], args.seconds, args.repeats
        )
    else:
        cached = args.backend == "tensorflow-pipeline"
        rate = measure_tensorflow(args.interpolation, cached, args.seconds, args.repeats)
    print(json.dumps({"rate": rate}))


def _pinned(backend: str, interpolation: str, cpus: str, args) -> float:
    """Runs a measurement in a fresh process pinned to `cpus`; returns images/s."""
    command = [
        "taskset", "-c", cpus, sys.executable, __file__, "--worker",
        "--backend", backend, "--interpolation", interpolation,
        "--seconds", str(args.seconds), "--repeats", str(args.repeats),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["rate"]


def main() -> None:
    """Parses flags; runs every configuration pinned to 1 and 2 cores; prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (median)")
    parser.add_argument(
        "--interpolations", nargs="+", default=list(INTERPOLATIONS), choices=INTERPOLATIONS
    )
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--interpolation", default="linear", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    backends = ("elasticdeform", "tensorflow-per-call", "tensorflow-pipeline")
    rows = []
    for interpolation in args.interpolations:
        rates = {
            (backend, cpus): _pinned(backend, interpolation, cpus, args)
            for backend in backends
            for cpus in ("0", "0,1")
        }
        reference = {cpus: rates["elasticdeform", cpus] for cpus in ("0", "0,1")}
        for backend in backends:
            one, two = rates[backend, "0"], rates[backend, "0,1"]
            rows.append(
                f"| {interpolation} + nearest | {backend} | {one:.1f} | {two:.1f} | "
                f"{two / one:.2f}x | {one / reference['0']:.2f}x | "
                f"{two / reference['0,1']:.2f}x |"
            )
            print(rows[-1], flush=True)

    publish(
        "Elastic deformation, 512x512 image + mask",
        f"`bench/elastic_deform.py --seconds {args.seconds} --repeats {args.repeats}`; "
        f"medians of {args.repeats} timings.",
        [
            "interpolation", "backend", "1 core img/s", "2 cores img/s", "2 vs 1 core",
            "vs elasticdeform, 1 core", "vs elasticdeform, 2 cores",
        ],
        rows,
        args.append,
    )  # fmt: skip


if __name__ == "__main__":
    main()

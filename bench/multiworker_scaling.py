"""Weak scaling of `--strategy multiworker`: two workers on one core each against one.

One worker pinned to core 0 trains with `--batch-size B`; then two workers, pinned to
cores 0 and 1 and joined over loopback (TF_CONFIG), train with `--batch-size 2B` (B per
worker). Both train the default model on ISBI 2012 sections 00-19 through the whole input
pipeline (elastic deformation included), without validation sections. Throughput is tiles
per second over the epochs after the first (which traces the step), from the epoch times
in the chief's log.csv; scaling is the two workers' throughput over the one worker's.

A ceiling measured the same way shows what the machine allows: two independent runs (not
joined: no gradients exchanged) pinned to cores 0 and 1 at once. A single-threaded float32
matrix product pinned likewise (one process, then two at once) is a second one. A
synchronous step waits for the slower worker, and this VM's cores run at different
speeds at the same moment, so twice the slower core's rate in the independent runs is
the best two joined workers could do.

The speed of this kind of VM's cores drifts by a third over minutes, so a ratio of two
runs made far apart means little: each round runs one worker, two joined workers (once for
each --gradient-exchange dtype named) and two independent runs back to back, and the
scaling reported is the median over the rounds of each round's own ratio.

    .venv/bin/python bench/multiworker_scaling.py [--rounds 3] [--batch 2] [--append]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train"


def train(
    workers: int, batch: int, epochs: int, steps: int, run: Path, exchange: str | None = None
) -> list[float]:
    """Tiles per second after the first epoch of `workers` single-core workers: of one run
    joined over loopback, summing gradients in `exchange`, or without it of each of as many
    independent runs at once."""
    joined = exchange is not None
    from common import free_port

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    processes, runs = [], []
    for index in range(workers):
        runs.append(run if joined else run / f"worker{index}")
        command = [
            "taskset", "-c", str(index), sys.executable, str(ROOT / "train_keras.py"),
            "--data", str(DATA), "--run-dir", str(runs[-1]), "--validation", "0",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps),
            "--batch-size", str(batch * workers if joined else batch),
        ]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if workers > 1 and joined:
            command += ["--strategy", "multiworker", "--gradient-exchange", exchange]
            task = {"type": "worker", "index": index}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        processes.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=1800)
        if process.returncode:
            raise RuntimeError(stderr[-3000:])
    rates = []
    for log in dict.fromkeys(runs):  # the chief's log, or each independent run's
        with open(log / "log.csv") as handle:
            seconds = [float(row["seconds"]) for row in csv.DictReader(handle)][1:]
        rates.append(steps * batch * (workers if joined else 1) / statistics.median(seconds))
    return rates


PRODUCT = """
import time, numpy as np
a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
a @ a
count, started = 0, time.perf_counter()
while time.perf_counter() - started < {seconds}:
    a @ a
    count += 1
print(count * 2 * 1024**3 / (time.perf_counter() - started) / 1e9)
"""


def matrix_products(processes: int, seconds: float = 20.0) -> float:
    """GFLOP/s of single-threaded float32 1024^2 products, one process per core, summed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, "-c", PRODUCT.format(seconds=seconds)]
    running = [
        subprocess.Popen(["taskset", "-c", str(core), *command], env=env, stdout=subprocess.PIPE)
        for core in range(processes)
    ]
    return sum(float(process.communicate(timeout=600)[0]) for process in running)


def main() -> None:
    """Runs the rounds (one worker, two joined, two independent), prints (appends) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=2, help="tiles per worker and step")
    parser.add_argument(
        "--exchanges", default="bfloat16,float32",
        help="--gradient-exchange dtypes of the joined workers, each run every round",
    )  # fmt: skip
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from common import publish

    exchanges = args.exchanges.split(",")
    work = Path(tempfile.mkdtemp(prefix="multiworker_"))
    plan = (args.batch, args.epochs, args.steps)
    rounds = []
    for index in range(args.rounds):
        [one] = train(1, *plan, work / f"one{index}")
        joined = [train(2, *plan, work / f"{dtype}{index}", dtype)[0] for dtype in exchanges]
        cores = train(2, *plan, work / f"apart{index}")
        apart, slower = sum(cores), 2 * min(cores)
        rounds.append((one, *joined, slower, apart))
        print(f"round {index + 1} tiles/s: one {one:.2f}, "
              + ", ".join(f"joined ({d}) {t:.2f}" for d, t in zip(exchanges, joined, strict=True))
              + f", independent {apart:.2f} (cores {cores[0]:.2f} + {cores[1]:.2f})",
              flush=True)  # fmt: skip
    product_one, product_two = matrix_products(1), matrix_products(2)
    medians = [statistics.median(column) for column in zip(*rounds, strict=True)]
    names = [
        f"2 workers, cores 0 and 1, gradients summed in {dtype} | {2 * args.batch}"
        for dtype in exchanges
    ]
    # A synchronous step waits for the slower worker: twice the slower core bounds it.
    names.append(f"twice the slower core of the independent runs | {args.batch} each")
    names.append(f"2 independent runs at once, cores 0 and 1 (ceiling) | {args.batch} each")
    rows = [f"| 1 worker, core 0 | {args.batch} | {medians[0]:.2f} tiles/s | 1.00x |"]
    for column, name in enumerate(names, start=1):
        ratios = [each[column] / each[0] for each in rounds]
        listed = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
        rows.append(
            f"| {name} | {medians[column]:.2f} tiles/s | "
            f"{statistics.median(ratios):.2f}x (rounds: {listed}) |"
        )
    rows += [
        f"| float32 matrix product, 1 process, core 0 | | {product_one:.1f} GFLOP/s | 1.00x |",
        f"| float32 matrix product, 2 processes, cores 0 and 1 | | {product_two:.1f} GFLOP/s "
        f"| {product_two / product_one:.2f}x |",
    ]
    print("\n".join(rows))
    publish(
        "Multi-worker training: weak scaling on single-core workers",
        f"Default model and settings, ISBI 2012 sections 00-19, no validation; "
        f"{args.epochs} epochs of {args.steps} steps, {args.batch} tiles per worker and step; "
        "tiles/s from the median epoch time after the first; workers pinned with taskset "
        f"and joined over loopback. {args.rounds} rounds, each running one worker, two "
        "joined workers for each gradient-exchange dtype and two independent runs pinned to "
        "one core each (their tiles/s summed; twice the slower one bounds synchronous "
        "steps) back to back; throughputs are medians over "
        "the rounds, scalings the medians of each round's own ratios. Matrix products: "
        "single-threaded 1024^2 float32 for 20 s, one process and then two pinned at once.",
        ["workers", "global batch", "throughput", "scaling"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

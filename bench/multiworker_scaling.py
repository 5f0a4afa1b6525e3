"""Weak scaling of `--strategy multiworker`: two workers on one core each against one.

One worker pinned to core 0 trains with `--batch-size B`; then two workers, pinned to
cores 0 and 1 and joined over loopback (TF_CONFIG), train with `--batch-size 2B` (B per
worker). Both train the default model on ISBI 2012 sections 00-19 through the whole input
pipeline (elastic deformation included), without validation sections. Throughput is tiles
per second over the epochs after the first (which traces the step), from the epoch times
in the chief's log.csv; scaling is the two workers' throughput over the one worker's.

    .venv/bin/python bench/multiworker_scaling.py [--epochs 4] [--append]
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


def train(workers: int, batch: int, epochs: int, steps: int, run: Path) -> float:
    """Tiles per second of a run of `workers` single-core workers after its first epoch."""
    from common import free_port

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    processes = []
    for index in range(workers):
        command = [
            "taskset", "-c", str(index), sys.executable, str(ROOT / "train_keras.py"),
            "--data", str(DATA), "--run-dir", str(run), "--validation", "0",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps),
            "--batch-size", str(batch * workers),
        ]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if workers > 1:
            command += ["--strategy", "multiworker"]
            task = {"type": "worker", "index": index}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        processes.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=1800)
        if process.returncode:
            raise RuntimeError(stderr[-3000:])
    with open(run / "log.csv") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)][1:]
    return steps * batch * workers / statistics.median(seconds)


def main() -> None:
    """Runs one worker, then two, and prints (appends) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=2, help="tiles per worker and step")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from common import publish

    work = Path(tempfile.mkdtemp(prefix="multiworker_"))
    one = train(1, args.batch, args.epochs, args.steps, work / "one")
    two = train(2, args.batch, args.epochs, args.steps, work / "two")
    rows = [
        f"| 1 worker, core 0 | {args.batch} | {one:.2f} | 1.00x |",
        f"| 2 workers, cores 0 and 1 | {2 * args.batch} | {two:.2f} | {two / one:.2f}x |",
    ]
    print("\n".join(rows))
    publish(
        "Multi-worker training: weak scaling on single-core workers",
        f"Default model and settings, ISBI 2012 sections 00-19, no validation; "
        f"{args.epochs} epochs of {args.steps} steps, {args.batch} tiles per worker and step; "
        "tiles/s from the median epoch time after the first; workers pinned with taskset "
        "and joined over loopback.",
        ["workers", "global batch", "tiles/s", "scaling"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

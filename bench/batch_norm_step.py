"""What batch normalisation costs a training step of the default model, fused and not.

The default model (16 filters, same padding, 256 px tiles, batch 2) trains one fixed batch
with `train_on_batch`, compiled as `unet_keras.training.fit` compiles it: without batch
normalisation, with Keras's `BatchNormalization` (as built before 2026-12-06), and with
`unet_keras.model.FusedBatchNormalization` (TensorFlow's fused kernel). The three take
turns in one process per precision, so the machine's noise falls on all alike; medians.

    .venv/bin/python bench/batch_norm_step.py [--steps 20] [--append]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys

PRECISIONS = ("float32", "mixed_bfloat16")
VARIANTS = ("no batch norm", "Keras BatchNormalization", "FusedBatchNormalization")


def _worker(policy: str, steps: int) -> None:
    """Times the three variants under one dtype policy; prints a JSON line of medians."""
    import keras
    import numpy as np
    from common import interleaved_timings

    import unet_keras.model
    from unet_keras.training.fit import compiled_model
    from unet_keras.training.training_settings import TrainConfig

    keras.mixed_precision.set_global_policy(policy)
    config = TrainConfig()
    plain = dataclasses.replace(config.model, batch_norm=False)
    normalised = dataclasses.replace(config.model, batch_norm=True)
    fused = unet_keras.model.FusedBatchNormalization
    models = {VARIANTS[0]: compiled_model(config, plain)}
    unet_keras.model.FusedBatchNormalization = keras.layers.BatchNormalization
    models[VARIANTS[1]] = compiled_model(config, normalised)
    unet_keras.model.FusedBatchNormalization = fused
    models[VARIANTS[2]] = compiled_model(config, normalised)
    for name, model in models.items():  # each variant holds the layer its name says
        kinds = {type(layer).__name__ for layer in model.layers if "_bn" in layer.name}
        assert kinds == ({name.split()[-1]} if "Normalization" in name else set()), name
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.tile, config.tile)
    images = rng.normal(size=(*shape, 1)).astype(np.float32)
    targets = np.stack([rng.integers(0, 2, shape), np.ones(shape)], -1).astype(np.float32)
    calls = {
        name: (lambda m=model: m.train_on_batch(images, targets)) for name, model in models.items()
    }
    interleaved_timings(calls, 3)  # tracing, then the kernels' first runs
    times = interleaved_timings(calls, steps)
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))


def main() -> None:
    """Runs one process per precision and prints (appends) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.steps)
        return
    from common import publish

    # oneDNN on, as --onednn auto trains the default model on both CPU kinds.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}
    rows = []
    for policy in PRECISIONS:
        command = [sys.executable, __file__, "--worker", policy, "--steps", str(args.steps)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        seconds = json.loads(result.stdout.strip().splitlines()[-1])
        plain = seconds[VARIANTS[0]]
        for name in VARIANTS:
            rows.append(
                f"| {policy} | {name} | {seconds[name]:.3f} | {seconds[name] / plain:.2f} |"
            )
            print(rows[-1], flush=True)
    publish(
        "Batch normalisation's cost in a training step",
        "The default model (16 filters, same padding), 256x256 tiles, batch 2, Adam, "
        "weighted cross-entropy, oneDNN on, as `unet_keras.training.fit` compiles it; "
        f"`bench/batch_norm_step.py --steps {args.steps}`, the variants taking turns; median "
        "seconds per step, and against the step without batch normalisation.",
        ["precision", "batch normalisation", "s/step", "x no batch norm"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

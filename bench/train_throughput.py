"""Training step throughput: images/s, achieved GFLOP/s and peak memory per configuration.

Each (model, precision) pair runs in a fresh process, so peak resident memory is its own.
A step is `train_on_batch` on one fixed batch, compiled as `unet_keras.training.fit` compiles it;
FLOPs count 2 per multiply-add in every convolution, 3x the forward pass for a training
step (forward, and the gradients with respect to inputs and weights).

    .venv/bin/python bench/train_throughput.py [--steps 3] [--append]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {"paper (64 filters)": (64, 572, 1), "default (16 filters)": (16, 316, 2)}
PRECISIONS = {
    "fp32": ("float32", False),
    "bf16": ("mixed_bfloat16", False),
    "XLA": ("float32", True),
}


def training_flops(model, tile: int) -> float:
    """FLOPs of one training step for one image: 3x the forward convolutions."""
    import keras
    import numpy as np

    convolutions = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
    ]
    probe = keras.Model(model.inputs, [layer.output for layer in convolutions])
    outputs = probe.predict(np.zeros((1, tile, tile, 1), np.float32), verbose=0)
    forward = 0.0
    for layer, output in zip(convolutions, outputs, strict=True):
        kernel = layer.kernel.shape  # (kh, kw, in, out) or (kh, kw, out, in) for transposed
        if isinstance(layer, keras.layers.Conv2DTranspose):
            # Each input pixel scatters a kh x kw kernel: count per input pixel.
            pixels = output.shape[1] * output.shape[2] / (kernel[0] * kernel[1])
        else:
            pixels = output.shape[1] * output.shape[2]
        forward += 2 * pixels * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    return 3 * forward


def _worker(name: str, precision: str, steps: int) -> None:
    """Measures one configuration in this process; prints a JSON line."""
    import keras
    import numpy as np

    from unet_keras.geometry import output_size
    from unet_keras.record import ModelConfig
    from unet_keras.training.fit import compiled_model
    from unet_keras.training.training_settings import TrainConfig

    filters, tile, batch = MODELS[name]
    policy, jit = PRECISIONS[precision]
    keras.mixed_precision.set_global_policy(policy)
    config = TrainConfig(model=ModelConfig(filters=filters), jit_compile=jit)
    model = compiled_model(config, config.model)
    out = output_size(tile)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, tile, tile, 1)).astype(np.float32)
    targets = np.stack(
        [rng.integers(0, 2, (batch, out, out)), np.ones((batch, out, out))], -1
    ).astype(np.float32)
    model.train_on_batch(images, targets)  # tracing and compilation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    keras.mixed_precision.set_global_policy("float32")
    flops = training_flops(build_probe(filters), tile) * batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"step": step, "batch": batch, "flops": flops, "peak_gib": peak}))


def build_probe(filters: int, padding: str = "valid"):
    """A float32 copy of the model shape, for counting FLOPs."""
    from unet_keras.model import build_unet

    return build_unet(filters=filters, padding=padding)


def main() -> None:
    """Runs every configuration in its own process and prints (appends) a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds allowed per configuration"
    )
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker, args.steps)
        return
    from common import publish

    rows = []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in MODELS:
        for precision in PRECISIONS:
            command = [sys.executable, __file__, "--worker", name, precision]
            command += ["--steps", str(args.steps)]
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, env=env, timeout=args.timeout
                )
            except subprocess.TimeoutExpired:
                rows.append(
                    f"| {name} | {precision} | over {args.timeout:.0f} s for "
                    f"{args.steps + 1} steps: stopped | | | |"
                )
                print(rows[-1], flush=True)
                continue
            if result.returncode != 0:
                rows.append(f"| {name} | {precision} | failed: {result.stderr[-200:]!r} | | | |")
                continue
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            _, tile, batch = MODELS[name]
            rows.append(
                f"| {name}, {tile}x{tile}, batch {batch} | {precision} | "
                f"{figures['step']:.2f} | {figures['batch'] / figures['step']:.2f} | "
                f"{figures['flops'] / figures['step'] / 1e9:.0f} | {figures['peak_gib']:.1f} |"
            )
            print(rows[-1], flush=True)
    publish(
        "Training step throughput",
        "Valid padding, depth 4, weighted cross-entropy, Adam; "
        f"`bench/train_throughput.py --steps {args.steps}`; median step time. GFLOP/s counts "
        "the convolutions (3x forward per training step).",
        ["model", "precision", "s/step", "images/s", "GFLOP/s", "peak RSS GiB"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

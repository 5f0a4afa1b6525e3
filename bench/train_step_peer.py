"""Our training step against the same U-Net in PyTorch, on the same cores, in one run.

The PyTorch network is ours layer for layer (valid 3x3 convolutions, ReLU, 2x2 max
pooling, dropout at the end of the contracting path, 2x2 transposed convolutions, crop and
concatenate, a 1x1 sigmoid output; He-normal weights), trained with the same loss (the
weighted binary cross-entropy) and Adam on the same batch. Each side runs in its own
process, in turns (ours, theirs, ours, theirs, ...), one warm-up step each, so the noise of
the machine falls on both; PyTorch runs both its default layout (NCHW) and channels-last,
and the faster is the reference. An sgemm probe (NumPy's BLAS and torch.mm, 4096 x 4096,
best of 5) measures the machine's fp32 peak, and torch.mm in bfloat16 its bf16 peak;
FLOPs count the convolutions, 3x the forward pass per training step.

    .venv/bin/python bench/train_step_peer.py [--rounds 2] [--append]   (extra: bench)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from unet_keras.training.training_settings import TrainConfig

DEFAULTS = TrainConfig()
# name -> (filters, padding, input tile, batch)
MODELS = {
    "paper": (64, "valid", 572, 1),
    "default": (
        DEFAULTS.model.filters,
        DEFAULTS.model.padding,
        DEFAULTS.tile,
        DEFAULTS.batch_size,
    ),
}
STEPS = {"paper": 3, "default": 10}
SIDES = {
    "ours fp32": ("keras", "float32"),
    "ours bf16": ("keras", "bfloat16"),
    "PyTorch fp32": ("torch", "float32"),
    "PyTorch fp32 channels-last": ("torch-cl", "float32"),
    "PyTorch bf16 channels-last": ("torch-cl", "bfloat16"),
}


def _batch(padding: str, tile: int, batch: int):
    """The same images and targets (class, weight) for both sides, NHWC."""
    import numpy as np

    from unet_keras.geometry import output_size

    out = output_size(tile) if padding == "valid" else tile
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, tile, tile, 1)).astype(np.float32)
    labels = rng.integers(0, 2, (batch, out, out)).astype(np.float32)
    weights = rng.uniform(1, 10, (batch, out, out)).astype(np.float32)
    return images, np.stack([labels, weights], -1)


def _keras_steps(name: str, precision: str, steps: int) -> list[float]:
    from unet_keras.training.kernels import load_tensorflow

    filters, padding, tile, batch = MODELS[name]
    load_tensorflow(DEFAULTS.onednn, filters)  # the kernels a training run would choose
    import keras

    from unet_keras.record import ModelConfig
    from unet_keras.training.fit import compiled_model
    from unet_keras.training.training_settings import TrainConfig

    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32"
    )
    config = TrainConfig(model=ModelConfig(filters=filters, padding=padding))
    model = compiled_model(config, config.model)
    images, targets = _batch(padding, tile, batch)
    model.train_on_batch(images, targets)  # tracing
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)
        times.append(time.perf_counter() - start)
    return times


def _torch_unet(filters: int, padding: str, depth: int = 4, dropout: float = 0.5):
    """Our U-Net in PyTorch."""
    import torch
    from torch import nn

    pad = 0 if padding == "valid" else 1

    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, padding=pad),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=pad),
            nn.ReLU(),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [filters * 2**level for level in range(depth + 1)]
            self.down = nn.ModuleList(
                block(1 if level == 0 else widths[level - 1], widths[level])
                for level in range(depth)
            )
            self.bottom = block(widths[depth - 1], widths[depth])
            self.upconv = nn.ModuleList(
                nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
                for level in range(depth)
            )
            self.up = nn.ModuleList(
                block(2 * widths[level], widths[level]) for level in range(depth)
            )
            self.output = nn.Conv2d(widths[0], 1, 1)
            self.drop = nn.Dropout(dropout)
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(module.weight)
                    nn.init.zeros_(module.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for level, down in enumerate(self.down):
                x = down(x)
                if level == depth - 1:
                    x = self.drop(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.drop(self.bottom(x))
            for level in range(depth - 1, -1, -1):
                x = nn.functional.relu(self.upconv[level](x))
                skip = skips[level]
                margin = (skip.shape[-1] - x.shape[-1]) // 2
                skip = skip[..., margin : margin + x.shape[-2], margin : margin + x.shape[-1]]
                x = self.up[level](torch.cat([skip, x], 1))
            return torch.sigmoid(self.output(x).float())

    return UNet()


def _torch_steps(name: str, precision: str, steps: int, channels_last: bool) -> list[float]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    filters, padding, tile, batch = MODELS[name]
    images, targets = _batch(padding, tile, batch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    network = _torch_unet(filters, padding).to(memory_format=layout)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=layout)
    labels = torch.from_numpy(targets[..., 0])[:, None]
    weights = torch.from_numpy(targets[..., 1])[:, None]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
            probabilities = network(x)
        loss = torch.nn.functional.binary_cross_entropy(probabilities, labels, weight=weights)
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _peaks() -> dict[str, float]:
    """GFLOP/s of the best of 5 4096^2 matrix products: fp32 (NumPy, torch) and, where the
    CPU has native bf16, torch bf16 (emulated, one product took minutes)."""
    import numpy as np
    import torch

    from unet_keras.training.kernels import native_bf16

    torch.set_num_threads(os.cpu_count() or 1)
    n = 4096

    def best(product, a, b) -> float:
        product(a, b)
        seconds = min(_timed(lambda: product(a, b)) for _ in range(5))
        return 2 * n**3 / seconds / 1e9

    a = np.random.default_rng(0).random((n, n), np.float32)
    t = torch.from_numpy(a)
    peaks = {"numpy fp32": best(np.matmul, a, a), "torch fp32": best(torch.mm, t, t)}
    if native_bf16():
        peaks["torch bf16"] = best(torch.mm, t.bfloat16(), t.bfloat16())
    return peaks


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _worker(side: str, name: str) -> None:
    kind, precision = SIDES[side]
    steps = STEPS[name]
    if kind == "keras":
        times = _keras_steps(name, precision, steps)
    else:
        times = _torch_steps(name, precision, steps, channels_last=kind == "torch-cl")
    print(json.dumps(times))


def main() -> None:
    """Alternates the sides in fresh processes, then prints (appends) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="turns per side")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--peaks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    if args.peaks:
        print(json.dumps(_peaks()))
        return
    from common import publish
    from train_throughput import build_probe, training_flops

    from unet_keras.training.kernels import native_bf16

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*flags: str) -> object:
        result = subprocess.run(
            [sys.executable, __file__, *flags], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    # Emulated bf16 (AVX2 only) is not a setting anyone would train with: 6x slower.
    sides = [side for side in SIDES if native_bf16() or SIDES[side][1] != "bfloat16"]
    peaks = run("--peaks")
    fp32_peak, bf16_peak = max(peaks["numpy fp32"], peaks["torch fp32"]), peaks.get("torch bf16")
    print(peaks, flush=True)
    rows = []
    for name, (filters, padding, tile, batch) in MODELS.items():
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side in sides:
                times[side] += run("--worker", side, name)
                print(name, side, times[side], flush=True)
        flops = training_flops(build_probe(filters, padding), tile) * batch
        step = {side: statistics.median(values) for side, values in times.items()}
        # Each precision against PyTorch's faster layout in the same precision.
        reference = {
            "float32": min(step["PyTorch fp32"], step["PyTorch fp32 channels-last"]),
            "bfloat16": step.get("PyTorch bf16 channels-last"),
        }
        for side in sides:
            bf16 = SIDES[side][1] == "bfloat16"
            rate = flops / step[side] / 1e9
            peak = bf16_peak if bf16 else fp32_peak
            ratio = reference[SIDES[side][1]] / step[side] if side.startswith("ours") else ""
            rows.append(
                f"| {name}: {filters} filters, {padding}, {tile}x{tile}, batch {batch} | "
                f"{side} | {step[side]:.3f} | "
                f"{rate:.0f} | {rate / peak:.0%} of {'bf16' if bf16 else 'fp32'} | "
                f"{'' if ratio == '' else f'{ratio:.2f}x'} |"
            )
            print(rows[-1], flush=True)
    import torch

    publish(
        "Training step against PyTorch on the same U-Net",
        f"torch {torch.__version__}; `bench/train_step_peer.py --rounds {args.rounds}`; "
        f"median step over {args.rounds} alternating turns per side ({STEPS} steps a turn "
        "after one warm-up). Peaks (4096^2 products, best of 5, GFLOP/s): "
        + ", ".join(f"{key} {value:.0f}" for key, value in peaks.items())
        + ". Ours runs the kernels `--onednn auto` loads for the model (oneDNN on for at "
        "most 32 filters on x86, else TensorFlow's choice); bf16 rows only on CPUs with "
        "native bf16. Speed-up: PyTorch's faster layout's step in the same precision over "
        "ours (above 1: ours is faster).",
        ["model", "side", "s/step", "GFLOP/s", "of peak", "speed-up"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()

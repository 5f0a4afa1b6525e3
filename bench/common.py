"""What the benchmarks share: the machine and library versions they record, timing,
exports of a random U-Net, and a local server to measure against."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

# How long a local server may take to load its model.
SERVER_START_SECONDS = 300.0

# The CPU features that change which kernels TensorFlow runs, and how fast.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def machine_description() -> str:
    """CPU model, features, core count and the versions that decide the figures."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    present = next(
        (set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set()
    )
    flags = " ".join(flag for flag in CPU_FLAGS if flag in present) or "none of " + "/".join(
        CPU_FLAGS
    )
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("tensorflow", "keras", "numpy", "elasticdeform")
    )
    return (
        f"{model} ({flags}), {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"{packages}"
    )


def interleaved_timings(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds each call takes, `repeats` times, taking turns so that the machine's noise
    falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of `values`."""
    import numpy as np

    return float(np.percentile(values, q))


def export_random_unet(folder: Path, filters: int = 16, **export_options: object):
    """A depth-4 valid-padding U-Net with seeded random weights, and its exported version.

    Returns (Keras model, version directory); the model is saved as `folder/model.keras`
    and exported under `folder/base/` (`export_options` go to `export_model`).
    """
    import keras

    from unet_keras.exports.savedmodel import export_model
    from unet_keras.model import build_unet
    from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig
    from unet_keras.saving import save_model

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=filters)
    model = build_unet(**config.to_dict())
    normalization = NormalizationConfig("standardize", (128.0,), (50.0,))
    record = ModelRecord(MaskConfig((0, 255)), normalization, config, (572, 388))
    save_model(model, folder / "model.keras", record)
    return model, export_model(folder / "model.keras", folder / "base", **export_options)


def publish(title: str, description: str, header: list[str], rows: list[str], append: bool):
    """Prints a benchmark's table with its title and setup; appends it to the benchmarks log."""
    report = "\n".join(
        [
            f"\n## {title} ({time.strftime('%Y-%m-%d')})\n",
            f"Machine: {machine_description()}. {description}\n",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
            *rows,
        ]
    )
    print(report)
    if append:
        with open(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", "a") as log:
            log.write(report + "\n")


@contextmanager
def serving(base: Path, log: Path, model: str = "unet") -> Iterator[tuple[str, str]]:
    """`unet-keras serve` of `base` on free loopback ports; its gRPC and REST addresses
    once a version is AVAILABLE."""
    from unet_keras.client import DeadlineExceededError, SegmentationClient

    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "unet_keras.cli", "serve", "--model-base-path", str(base),
               "--model-name", model, "--port", address.rsplit(":", 1)[1],
               "--rest-api-port", rest.rsplit(":", 1)[1]]  # fmt: skip
    with open(log, "wb") as stderr:
        server = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        with SegmentationClient(address, model) as client:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log.read_text()}")
                try:
                    client.wait_until_available(timeout=1.0)
                    break
                except DeadlineExceededError:
                    if time.monotonic() > deadline:
                        raise
        yield address, rest
    finally:
        server.terminate()
        server.wait(timeout=60)


def free_port() -> int:
    """A loopback port free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""What every benchmark records: the machine and the library versions."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

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


def export_random_unet(folder: Path, filters: int = 16):
    """A depth-4 valid-padding U-Net with seeded random weights, and its exported version.

    Returns (Keras model, version directory); the model is saved as `folder/model.keras`
    and exported under `folder/base/`.
    """
    import keras

    from unet_keras.config import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig
    from unet_keras.model import build_unet
    from unet_keras.saving import save_model
    from unet_keras.serving.export import export_model

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=filters)
    model = build_unet(**config.to_dict())
    normalization = NormalizationConfig("standardize", (128.0,), (50.0,))
    record = ModelRecord(MaskConfig((0, 255)), normalization, config, (572, 388))
    save_model(model, folder / "model.keras", record)
    return model, export_model(folder / "model.keras", folder / "base")


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

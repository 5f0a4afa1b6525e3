"""What every benchmark records: the machine and the library versions."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version
from pathlib import Path


def machine_description() -> str:
    """CPU model, core count and the versions that decide the figures."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("tensorflow", "keras", "numpy", "elasticdeform")
    )
    return f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, {packages}"


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

"""What every benchmark records: the machine and the library versions."""

from __future__ import annotations

import os
import platform
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

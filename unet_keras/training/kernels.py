"""oneDNN or TensorFlow's own CPU kernels for a training run (`--onednn`), chosen as
TensorFlow loads.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, as it loads, and by default runs oneDNN only
on CPUs with AVX-512 VNNI or BF16, or AMX. On an AVX2-only CPU (AMD EPYC, 2 cores; the
2026-11-30 figures in docs/benchmarks.md) oneDNN ran the training step of the default
16-filter model 1.5x faster and of 32 filters 1.1x faster, but of 64 filters 1.5x slower at
256 px, and the paper's 512 px step had not ended after 400 s. So `auto` turns oneDNN on
for narrow models and otherwise leaves TensorFlow's own choice.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
# The widest first level (filters) at which oneDNN trained faster on an AVX2-only CPU.
ONEDNN_WIDEST = 32


def onednn_setting(choice: Literal["auto", "on", "off"], filters: int) -> str | None:
    """TF_ENABLE_ONEDNN_OPTS for `--onednn` and a model of `filters`; None: TensorFlow's own."""
    if choice != "auto":
        return "1" if choice == "on" else "0"
    if os.environ.get(ONEDNN) is not None:
        return None  # the user's own setting stands
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "1" if x86 and filters <= ONEDNN_WIDEST else None


def load_tensorflow(choice: Literal["auto", "on", "off"], filters: int) -> bool:
    """Loads TensorFlow with oneDNN as `--onednn` says; returns whether oneDNN is on.

    The environment is left as it was: the setting is read once, as TensorFlow loads, so
    processes this one starts choose for themselves. Where TensorFlow is loaded already,
    its setting stands and a different choice is logged.
    """
    value = onednn_setting(choice, filters)
    before = os.environ.get(ONEDNN)
    if value is not None and "tensorflow" not in sys.modules:
        os.environ[ONEDNN] = value
    try:
        import tensorflow  # noqa: F401  (reads the setting)

        enabled = onednn_enabled()
    finally:
        if before is None:
            os.environ.pop(ONEDNN, None)
        else:
            os.environ[ONEDNN] = before
    if value is not None and enabled != (value == "1"):
        log.warning(
            "--onednn %s: TensorFlow was loaded before with oneDNN %s; that stays",
            choice,
            "on" if enabled else "off",
        )
    return enabled


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN (by the CPU and the setting
    TF_ENABLE_ONEDNN_OPTS, as TensorFlow itself decides)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: else the setting alone
        return os.environ.get(ONEDNN) != "0"
    return bool(_pywrap_util_port.IsMklEnabled())


def native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 itself (AVX512_BF16 or AMX), not emulated."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)

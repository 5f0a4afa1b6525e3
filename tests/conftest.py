"""Shared pytest setup and fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) drowns test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012"


@pytest.fixture(scope="session")
def isbi() -> Path:
    """The ISBI 2012 data folder; skips only when it is absent (CI checks it is there)."""
    if not (ISBI / "train" / "images").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {ISBI}")
    return ISBI

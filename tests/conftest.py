"""Shared pytest setup and fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) drowns test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012"


# Settings that change how fast TensorFlow runs here and in the processes tests start.
# Importing libraries sets other variables (TF2_BEHAVIOR, which TensorFlow reads again
# later), so only these are held.
SPEED_SETTINGS = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
    "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
    "TF_XLA_FLAGS", "CUDA_VISIBLE_DEVICES",
)  # fmt: skip


@pytest.fixture(autouse=True)
def speed_settings_unchanged():
    """Fails a test that leaves a speed setting changed, and undoes the change: a leaked
    OMP_NUM_THREADS=1 (distributed's nanny sets it) made later training tests 7x slower."""
    saved = {name: os.environ.get(name) for name in SPEED_SETTINGS}
    yield
    changed = sorted(name for name in SPEED_SETTINGS if os.environ.get(name) != saved[name])
    for name in changed:
        if saved[name] is None:
            del os.environ[name]
        else:
            os.environ[name] = saved[name]
    assert not changed, f"the test left these environment variables changed: {changed}"


@pytest.fixture(scope="session")
def isbi() -> Path:
    """The ISBI 2012 data folder; skips only when it is absent (CI checks it is there)."""
    if not (ISBI / "train" / "images").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {ISBI}")
    return ISBI


@pytest.fixture
def tiny_unet():
    """The shared tiny U-Net and its record: `tiny_unet(config=TINY, seed=7, tile=(92, 52))`."""
    from tests.serving_fixtures import tiny_unet

    return tiny_unet


@pytest.fixture
def tiny_model_file(tmp_path: Path):
    """Saves the tiny U-Net in tmp_path: `tiny_model_file(name, config=, seed=, tile=)`."""
    from tests.serving_fixtures import save_unet

    def save(*args, **kwargs) -> Path:
        return save_unet(
            tmp_path / f"model_{len(list(tmp_path.glob('model_*')))}.keras", *args, **kwargs
        )

    return save


@pytest.fixture
def membrane_white_model(tiny_model_file) -> Path:
    """The tiny U-Net whose masks are drawn membrane-white, (255, 0): its `.keras` file."""
    from unet_keras.record import MaskConfig

    return tiny_model_file(mask=MaskConfig((255, 0)), seed=5)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny U-Net exported as version 1 (tile 76, at most 10**7 pixels); its folder."""
    from tests.serving_fixtures import export_unet

    return export_unet(tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def tiny_server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    """`unet-keras serve` of the tiny export in a subprocess, AVAILABLE; its ServerProcess."""
    from tests.serving_fixtures import UNET, ServerProcess

    log = tmp_path_factory.mktemp("tiny_server") / "server.log"
    process = ServerProcess(tiny_export.parent, UNET, log, "--poll-seconds", "0.2")
    process.wait_available()
    yield process
    process.terminate()
    process.wait()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 96x96 synthetic image/mask pairs in images/ and masks/ (ISBI convention)."""
    from unet_keras.io.data_settings import SyntheticConfig
    from unet_keras.workflows import synthetic

    return synthetic(SyntheticConfig(str(tmp_path_factory.mktemp("data")), count=6, size=96))


@pytest.fixture
def core_here(tmp_path, monkeypatch):
    """bioimageio.core unzips TensorFlow weights into the working directory, and sets
    TF_ENABLE_ONEDNN_OPTS=0 for good (which would slow the TensorFlow processes that later
    tests start). monkeypatch undoes both; the value set here is read by no one, as
    TensorFlow in this process has started already."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))
    return tmp_path


# The skips CI accepts, by a phrase of their reason: what CI machines cannot have. With
# UNET_KERAS_REVIEWED_SKIPS_ONLY=1 (.ci/run sets it) any other skip fails the run, so an
# extra that fails to install or a fixture that stops finding its data cannot turn tests
# into a silent "s".
REVIEWED_SKIPS = (
    # A real tensorflow_model_server: neither on PyPI nor in Debian, and no Docker engine.
    "UNET_TF_SERVING_ADDRESS is not set",
    "UNET_TF_SERVING_MODELS is not set",
)
_unreviewed_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Notes each skip whose reason is not reviewed (on xdist's controller too)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if not any(phrase in reason for phrase in REVIEWED_SKIPS):
            _unreviewed_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run on an unreviewed skip where CI asks for it."""
    worker = hasattr(session.config, "workerinput")
    if worker or not _unreviewed_skips or os.environ.get("UNET_KERAS_REVIEWED_SKIPS_ONLY") != "1":
        return
    lines = "\n  ".join(_unreviewed_skips)
    session.config.get_terminal_writer().line(
        f"\nskips not on the reviewed list (tests/conftest.py REVIEWED_SKIPS):\n  {lines}",
        red=True,
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

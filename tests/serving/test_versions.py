"""unet_keras.serving.versions: which folders are versions, and what a load failure does."""

import threading
from pathlib import Path

import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    export_half_plus_two,
    registry_for,
    write_garbage,
    write_version,
)
from unet_keras.serving.models import ModelRegistry
from unet_keras.serving.status import StatusError

State = get_model_status_pb2.ModelVersionStatus.State


def latest(manager: ModelRegistry) -> int:
    """The version a request for the latest one gets."""
    with manager.servable(model_pb2.ModelSpec(name=HALF_PLUS_TWO)) as servable:
        return servable.version


def test_folders_that_are_no_int64_are_skipped_at_start_and_while_polling(tmp_path: Path):
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    (base / "99999999999999999999").mkdir()  # TF Serving's SimpleAtoi fails: not a version
    manager = registry_for(HALF_PLUS_TWO, base)
    assert manager.start(0.1, threading.Event())
    assert latest(manager) == 1
    export_half_plus_two(base, 2)
    manager.poll()
    assert latest(manager) == 2


def test_a_version_that_fails_to_load_is_never_served(tmp_path: Path):
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    manager = registry_for(HALF_PLUS_TWO, base)
    assert manager.start(0.1, threading.Event())
    write_version(base, 2, write_garbage)
    manager.poll()
    manager.poll()  # not retried while its folder stays
    assert latest(manager) == 1
    status = manager.status(model_pb2.ModelSpec(name=HALF_PLUS_TWO, version={"value": 2}))
    assert status.model_version_status[0].state == State.END
    assert "Can't parse" in status.model_version_status[0].status.error_message


def test_start_fails_when_only_a_broken_version_is_there(tmp_path: Path):
    base = tmp_path / "broken"
    write_version(base, 5, write_garbage)
    with pytest.raises(StatusError, match="version: 5} due to error: DATA_LOSS"):
        registry_for("broken", base).start(0.1, threading.Event())

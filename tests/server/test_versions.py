"""unet_keras.server.versions: which folders are versions, and what a load failure does."""

import logging
import shutil
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
from unet_keras.server.models import ModelRegistry
from unet_keras.server.status import StatusError
from unet_keras.server.versions import LoadOptions, ModelManager

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


def test_a_failed_load_is_tried_again_and_serves_once_it_loads(tmp_path: Path, caplog):
    """As TF Serving's LoaderHarness: LOADING (status OK) between tries, then AVAILABLE."""
    caplog.set_level(logging.INFO)
    base = tmp_path / HALF_PLUS_TWO
    write_version(base, 1, write_garbage)
    stop = threading.Event()
    options = LoadOptions(retries=3, retry_interval=0.5, stop=stop)
    manager = ModelManager(HALF_PLUS_TWO, base, load_options=options)
    loading = threading.Thread(target=manager.poll)
    loading.start()
    spec = model_pb2.ModelSpec(name=HALF_PLUS_TWO)
    while "failed: DATA_LOSS" not in caplog.text:  # the first try has failed
        assert loading.is_alive()
        loading.join(0.01)
    state = manager.status(spec).model_version_status[0]
    assert state.state == State.LOADING and state.status.error_code == 0
    # The version is fixed before the next try, which then loads it.
    shutil.rmtree(base / "1")
    export_half_plus_two(base, 1)
    loading.join()
    assert manager.available() == {1}
    assert "Retrying of Loading servable: {name: half_plus_two version: 1} retry: 1" in caplog.text


def test_after_the_last_try_a_version_ends_with_its_error(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    base = tmp_path / HALF_PLUS_TWO
    write_version(base, 1, write_garbage)
    options = LoadOptions(retries=2, retry_interval=0.01)
    manager = ModelManager(HALF_PLUS_TWO, base, load_options=options)
    manager.poll()
    state = manager.status(model_pb2.ModelSpec(name=HALF_PLUS_TWO)).model_version_status[0]
    assert state.state == State.END and "Can't parse" in state.status.error_message
    assert caplog.text.count("Loading servable: {name: half_plus_two version: 1} failed") == 3
    assert "exhausted max_num_retries: 2" in caplog.text


def test_stopping_the_server_ends_the_wait_between_tries(tmp_path: Path):
    base = tmp_path / HALF_PLUS_TWO
    write_version(base, 1, write_garbage)
    stop = threading.Event()
    stop.set()
    options = LoadOptions(retries=5, retry_interval=3600, stop=stop)
    manager = ModelManager(HALF_PLUS_TWO, base, load_options=options)
    manager.poll()  # returns at once: the hour's wait is cut by `stop`
    state = manager.status(model_pb2.ModelSpec(name=HALF_PLUS_TWO)).model_version_status[0]
    assert state.state == State.END

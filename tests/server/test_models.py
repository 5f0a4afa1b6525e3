"""unet_keras.server.models: the model config file, version policies and labels, as TF
Serving's ServerCore applies them."""

import threading
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import model_pb2

from tests.serving_fixtures import HALF_PLUS_TWO, export_half_plus_two
from unet_keras.server.models import ModelEntry, ModelRegistry, read_model_config
from unet_keras.server.status import StatusError
from unet_keras.server.versions import VersionPolicy


def config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.config"
    path.write_text(f"model_config_list {{ {body} }}")
    return path


def served(registry: ModelRegistry, name: str = HALF_PLUS_TWO, **spec: object) -> int:
    """The version a request with this model spec gets."""
    with registry.servable(model_pb2.ModelSpec(name=name, **spec)) as servable:
        return servable.version


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """half_plus_two versions 1, 2 and 3 (y = x/2 + version)."""
    base = tmp_path_factory.mktemp("models") / HALF_PLUS_TWO
    for version in (1, 2, 3):
        export_half_plus_two(base, version, b=float(version))
    return base


def test_the_config_file_reads_as_tf_serving_reads_it(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        'config { name: "a" base_path: "/m/a" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 2 } } } "
        'config { name: "b" base_path: "/m/b" model_version_policy { all {} } } '
        'config { name: "c" base_path: "/m/c" '
        "model_version_policy { specific { versions: 4 versions: 5 } } "
        'version_labels { key: "stable" value: 4 } version_labels { key: "canary" value: 5 } }',
    )
    assert read_model_config(path) == [
        ModelEntry("a", "/m/a", VersionPolicy("latest", count=2)),
        ModelEntry("b", "/m/b", VersionPolicy("all")),
        ModelEntry(
            "c", "/m/c", VersionPolicy("specific", versions=(4, 5)), (("canary", 5), ("stable", 4))
        ),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('config { name: "a" base_path: "m/a" }', "Expected model a to have an absolute path"),
        ('config { name: "a" base_path: "/m" model_platform: "onnx" }', "platform 'onnx'"),
        ('config { name: "a" base_path: "/m" colour: 3 }', "not a text ModelServerConfig"),
        (
            'config { name: "a" base_path: "/m" model_version_policy { specific {} } }',
            "lists no versions",
        ),
    ],
)
def test_a_bad_config_file_is_refused_by_name(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(StatusError, match=message) as raised:
        read_model_config(config_file(tmp_path, body))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_model_listed_twice_is_refused(versions: Path) -> None:
    entry = ModelEntry(HALF_PLUS_TWO, str(versions))
    with pytest.raises(StatusError, match="Illegal to list model half_plus_two multiple times"):
        ModelRegistry().apply([entry, entry])


@pytest.mark.parametrize(
    ("policy", "served_versions"),
    [
        (VersionPolicy(), {3}),
        (VersionPolicy("latest", count=2), {2, 3}),
        (VersionPolicy("all"), {1, 2, 3}),
        (VersionPolicy("specific", versions=(1, 3, 9)), {1, 3}),
    ],
)
def test_each_version_policy_serves_its_versions(
    versions: Path, policy: VersionPolicy, served_versions: set[int]
) -> None:
    registry = ModelRegistry()
    registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions), policy)])
    assert registry.start(0.1, threading.Event())
    assert registry.manager(HALF_PLUS_TWO).available() == served_versions
    assert served(registry) == max(served_versions)  # "latest": the newest one served


def test_a_label_names_an_available_version_and_moves_only_to_one(versions: Path) -> None:
    registry = ModelRegistry()
    both = VersionPolicy("specific", versions=(1, 2))
    registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions), both)])
    assert registry.start(0.1, threading.Event())
    registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions), both, (("stable", 1),))])
    assert served(registry, version_label="stable") == 1
    with pytest.raises(StatusError, match="Unrecognized servable version label: canary") as raised:
        served(registry, version_label="canary")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # Version 3 is on disk but not served: no label may name it, and nothing changes.
    with pytest.raises(StatusError) as raised:
        registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions), both, (("stable", 3),))])
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message == (
        "Request to assign label to version 3 of model half_plus_two, which is not "
        "currently available for inference"
    )
    assert served(registry, version_label="stable") == 1
    registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions), both, (("stable", 2),))])
    assert served(registry, version_label="stable") == 2


def test_labels_for_unavailable_versions_only_when_allowed_and_never_moved(
    versions: Path,
) -> None:
    entry = ModelEntry(HALF_PLUS_TWO, str(versions), labels=(("canary", 3), ("next", 4)))
    with pytest.raises(StatusError, match="version 3 of model half_plus_two"):
        ModelRegistry().apply([entry])  # at start nothing is available yet
    registry = ModelRegistry(allow_labels_for_unavailable=True)
    registry.apply([entry])
    assert registry.start(0.1, threading.Event())
    assert served(registry, version_label="canary") == 3
    with pytest.raises(StatusError, match=r"Specific\(half_plus_two, 4\)") as raised:
        served(registry, version_label="next")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    # An existing label moved to a version not available: refused even so.
    moved = ModelEntry(HALF_PLUS_TWO, str(versions), labels=(("canary", 1), ("next", 4)))
    with pytest.raises(StatusError, match="version 1 of model half_plus_two"):
        registry.apply([moved])


def test_a_new_config_adds_and_removes_models(versions: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    export_half_plus_two(other, 7)
    registry = ModelRegistry()
    registry.apply([ModelEntry(HALF_PLUS_TWO, str(versions))])
    assert registry.start(0.1, threading.Event())
    assert registry.apply([ModelEntry("other", str(other))])
    registry.poll()
    assert registry.names == ["other"] and served(registry, "other") == 7
    with pytest.raises(StatusError, match=r"Latest\(half_plus_two\)") as raised:
        served(registry)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert not registry.apply([ModelEntry("other", str(other))])  # the same config: no change

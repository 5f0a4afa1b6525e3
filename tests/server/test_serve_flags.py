"""`unet-keras serve` takes tensorflow_model_server's flags as spelled there, and the
deployment files' argument lists start it unchanged; its grpc.health.v1 service."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving_fixtures import (
    REPOSITORY,
    UNET,
    ServerProcess,
    certificates,
    export_half_plus_two,
    free_port,
)
from unet_keras.cli import build_parser, settings_from
from unet_keras.cli import parse as parse_command_line
from unet_keras.server.serve import _grpc_options, _load_options
from unet_keras.server.server_settings import UNSUPPORTED_SERVER_FLAGS

SERVING = REPOSITORY / "serving"
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def parse(*argv: str) -> object:
    """The ServeConfig a `unet-keras serve` command line gives."""
    return settings_from(build_parser().parse_args(["serve", *argv]))


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`unet-keras serve ARGV` in a subprocess (for errors that end the parse)."""
    return subprocess.run(
        [sys.executable, "-m", "unet_keras.cli", "serve", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_tensorflow_model_server_spellings_mean_what_they_mean_there() -> None:
    config = parse(
        "--port=9000", "--rest_api_port=9001", "--model_name=unet", "--model_base_path=/m/unet",
        "--file_system_poll_wait_seconds=5", "--model_config_file_poll_wait_seconds=60",
        "--rest_api_timeout_in_ms=2500", "--rest_api_enable_cors_support",
        "--enable_model_warmup=false", "--max_num_load_retries=2",
        "--load_retry_interval_micros=500000", "--grpc_max_threads=3",
        "--tensorflow_intra_op_parallelism=4", "--tensorflow_inter_op_parallelism=2",
        "--enable_grpc_healthcheck_service=true", "--enable_batching=false",
    )  # fmt: skip
    assert (config.port, config.rest_api_port, config.model_name) == (9000, 9001, "unet")
    assert config.model_base_path == "/m/unet"
    assert config.file_system_poll_wait_seconds == 5
    assert config.model_config_file_poll_wait_seconds == 60
    assert config.rest_api_timeout_in_ms == 2500 and config.rest_api_enable_cors_support
    assert config.enable_model_warmup is False and config.enable_batching is False
    assert config.max_num_load_retries == 2 and config.grpc_max_threads == 3
    options = _load_options(config, stop=None)
    assert (options.retries, options.retry_interval, options.warmup) == (2, 0.5, False)
    assert options.session_config.intra_op_parallelism_threads == 4
    assert options.session_config.inter_op_parallelism_threads == 2


def test_our_own_spellings_keep_working() -> None:
    config = parse("--model-base-path", "b", "--poll-seconds", "0.2", "--threads", "2")
    assert config.model_base_path == "b"
    assert config.file_system_poll_wait_seconds == 0.2 and config.grpc_max_threads == 2
    both = parse("--model-base-path=b", "--allow-version-labels-for-unavailable-models")
    assert both.allow_version_labels_for_unavailable_models is True


@pytest.mark.parametrize(
    ("spelled", "value"),
    [("", True), ("=true", True), ("=TRUE", True), ("=1", True), ("=false", False), ("=0", False)],
)
def test_a_true_or_false_flag_takes_tensorflow_model_servers_forms(
    spelled: str, value: bool
) -> None:
    config = parse("--model_base_path=b", f"--rest_api_enable_cors_support{spelled}")
    assert config.rest_api_enable_cors_support is value
    assert parse("--model_base_path=b", "--no-enable-model-warmup").enable_model_warmup is False


def test_session_parallelism_sets_both_pools_as_tensorflow_model_server_does() -> None:
    session = _load_options(
        parse("--model_base_path=b", "--tensorflow_session_parallelism=3"), None
    )
    assert session.session_config.intra_op_parallelism_threads == 3
    assert session.session_config.inter_op_parallelism_threads == 3


def test_grpc_channel_arguments_are_passed_as_main_cc_passes_them() -> None:
    arguments = "grpc.max_connection_age_ms=300000,grpc.primary_user_agent=unet"
    assert _grpc_options(arguments) == [
        ("grpc.max_connection_age_ms", 300000),
        ("grpc.primary_user_agent", "unet"),
    ]
    with pytest.raises(ValueError, match=r"--grpc_channel_arguments .*'nokey' is not KEY=VALUE"):
        _grpc_options("grpc.a=1,nokey")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--enable_profiler=false"], "--enable_profiler is a tensorflow_model_server flag"),
        (["--grpc_socket_path=/tmp/s"], "--grpc_socket_path is a tensorflow_model_server flag"),
        (["--enable_batching=true"], "--enable_batching and --batching_parameters_file"),
        (["--batching_parameters_file=/config/b"], "--enable_batching and --batching_param"),
        (["--enable_model_warmup=maybe"], "--enable_model_warmup: expected true or false"),
        (["--grpc_max_threads=0"], "grpc_max_threads must be at least 1"),
        (
            ["--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=2"],
            "not both",
        ),
        (["--no_such_flag=1"], "unrecognized arguments: --no_such_flag=1"),
    ],
)
def test_bad_or_unsupported_flags_get_one_line_that_names_them(
    argv: list[str], named: str
) -> None:
    result = run_cli("--model_base_path=/nonexistent", *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_every_unsupported_flag_is_refused_not_ignored(capsys: pytest.CaptureFixture) -> None:
    for flag in UNSUPPORTED_SERVER_FLAGS:
        with pytest.raises(SystemExit):
            parse_command_line(["serve", "--model_base_path=b", f"--{flag}=1"])
        assert f"--{flag} is a tensorflow_model_server flag" in capsys.readouterr().err


def container_args() -> list[str]:
    """The Kubernetes Deployment's tensorflow_model_server arguments."""
    deployment = yaml.safe_load((SERVING / "kubernetes" / "deployment.yaml").read_text())
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_kubernetes_arguments_mean_the_same_to_unet_keras_serve() -> None:
    config = parse(*container_args())
    assert (config.port, config.rest_api_port) == (8500, 8501)
    assert config.model_config_file == "/config/models.config"
    assert config.monitoring_config_file == "/config/monitoring.config"
    assert config.model_config_file_poll_wait_seconds == 60
    assert config.file_system_poll_wait_seconds == 5
    assert config.grpc_max_threads == 16 and config.enable_grpc_healthcheck_service
    session = _load_options(config, None).session_config
    assert (session.intra_op_parallelism_threads, session.inter_op_parallelism_threads) == (4, 2)
    assert dict(_grpc_options(config.grpc_channel_arguments)) == {
        "grpc.max_connection_age_ms": 300000,
        "grpc.max_connection_age_grace_ms": 60000,
    }


def health(address: str, service: str = "") -> int:
    """The grpc.health.v1 status of `service` at `address`."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        return stub.Check(request, timeout=10).status


def test_serve_with_tensorflow_model_servers_flags_answers_a_health_check(tmp_path: Path) -> None:
    base = tmp_path / "unet"
    export_half_plus_two(base, 1)
    port, rest_port = free_port(), free_port()
    flags = [f"--port={port}", f"--rest_api_port={rest_port}", "--model_name=unet"]
    log = tmp_path / "log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "unet_keras.cli", "serve", *flags,
             f"--model_base_path={base}"],
            stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
    server = ServerProcess.attach(process, f"127.0.0.1:{port}", UNET, log)
    try:
        server.wait_available()
        for service in ("", UNET, "ModelService", "tensorflow.serving.PredictionService"):
            assert health(server.address, service) == SERVING_STATUS, service
        with pytest.raises(grpc.RpcError) as unknown:
            health(server.address, "no-such-model")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # Draining: a watcher is told NOT_SERVING before the server stops.
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == SERVING_STATUS
            server.terminate()
            assert next(watch).status == NOT_SERVING
    finally:
        server.terminate()
        assert server.wait() == 0


def test_a_repeated_sigterm_still_ends_the_server_cleanly(tmp_path: Path) -> None:
    """A supervisor that repeats SIGTERM until the process is gone: every one of them, up
    to the process's last steps, is the same request to stop, never a kill."""
    export_half_plus_two(tmp_path / "half", 1)
    server = ServerProcess(tmp_path / "half", "half", tmp_path / "log")
    server.wait_available()
    signals, deadline = 0, time.monotonic() + 60
    while server.process.poll() is None and time.monotonic() < deadline:
        server.process.send_signal(signal.SIGTERM)
        signals += 1
        time.sleep(0.005)
    assert server.wait() == 0, server.log.read_text()
    assert signals > 1


def test_launch_sh_starts_unet_keras_serve_with_its_flags_unchanged(tmp_path: Path) -> None:
    base = tmp_path / "exports" / UNET
    export_half_plus_two(base, 1)
    port, rest_port = free_port(), free_port()
    env = {
        # The environment's own unet-keras, as a user who activated it finds it.
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "SERVER": "unet-keras serve",
        "GRPC_PORT": str(port),
        "REST_PORT": str(rest_port),
        "TMPDIR": str(tmp_path),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    printed = subprocess.run(
        ["bash", os.fspath(SERVING / "launch.sh"), "--print", str(base)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    words = shlex.split(printed.replace("\\\n", " "))
    assert words[:2] == [os.fspath(Path(sys.executable).parent / "unet-keras"), "serve"]
    assert set(words[2:]) >= {f"--port={port}", "--enable_grpc_healthcheck_service=true"}
    log = tmp_path / "log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            ["bash", os.fspath(SERVING / "launch.sh"), str(base)],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    server = ServerProcess.attach(process, f"127.0.0.1:{port}", UNET, log)
    try:
        server.wait_available()
        assert health(server.address, UNET) == SERVING_STATUS
    finally:
        server.terminate()
        assert server.wait() == 0


def test_an_ssl_config_file_serves_grpc_over_mutual_tls(tmp_path: Path) -> None:
    """TF Serving's SSLConfig holds PEM texts; client_verify requires a client certificate
    that custom_ca signed."""
    pem = certificates(tmp_path)
    fields = {"server_key": "server.key", "server_cert": "server.pem", "custom_ca": "ca.pem"}
    text = "".join(
        f"{field}: {json.dumps(pem[name].read_text())}\n" for field, name in fields.items()
    )
    (tmp_path / "ssl.config").write_text(text + "client_verify: true\n")
    export_half_plus_two(tmp_path / UNET, 1)
    process = ServerProcess(
        tmp_path / UNET, UNET, tmp_path / "log", f"--ssl_config_file={tmp_path / 'ssl.config'}"
    )
    root = pem["ca.pem"].read_bytes()
    address = process.address.replace("127.0.0.1", "localhost")  # the certificate's name
    trusted = grpc.ssl_channel_credentials(
        root, pem["client.key"].read_bytes(), pem["client.pem"].read_bytes()
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the port opens once the version has loaded
            try:
                with grpc.secure_channel(address, trusted) as channel:
                    request = health_pb2.HealthCheckRequest(service=UNET)
                    status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
                    break
            except grpc.RpcError:
                assert time.monotonic() < deadline and process.process.poll() is None, (
                    process.log.read_text()
                )
                time.sleep(0.2)
        assert status.status == SERVING_STATUS
        # Without a client certificate the handshake fails.
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(root)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        process.terminate()
        assert process.wait() == 0

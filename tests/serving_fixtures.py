"""Models and a server process for the model-server tests, also for a real TF Serving.

`python -m tests.serving_fixtures DIR`, from the repository root, writes the models that
the conformance tests (tests/server/test_grpc_services.py, test_rest_api.py) expect,
`DIR/models.config` for `tensorflow_model_server --model_config_file` (with the label
`stable` on half_plus_two's version, so the server needs
`--allow_version_labels_for_unavailable_models`) and `DIR/monitoring.config` for
`--monitoring_config_file`: `half_plus_two` (version 123, as in TF Serving's own tests)
and `unet` (version 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2

from tests.tf_serving_runtime import SavedModelSession, TFStatusError
from unet_keras import contract
from unet_keras.exports.savedmodel import export_model
from unet_keras.model import build_unet
from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig
from unet_keras.saving import save_model
from unet_keras.server.models import ModelEntry, ModelRegistry

HALF_PLUS_TWO = "half_plus_two"
HALF_PLUS_TWO_VERSION = 123
UNET = "unet"
UNET_VERSION = 1
REPOSITORY = Path(__file__).resolve().parents[1]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class HalfPlusTwo(tf.Module):
    """TF Serving's test model: y = a * x + b, by default a = 0.5 and b = 2."""

    def __init__(self, a: float = 0.5, b: float = 2.0) -> None:
        super().__init__()
        self.a = tf.Variable(a, dtype=tf.float32)
        self.b = tf.Variable(b, dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, "x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        """The `serving_default` signature: `x` -> `y`."""
        return {"y": self.a * x + self.b}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.float32, "x"),
            tf.TensorSpec([], tf.int64, "iterations"),
        ]
    )
    def slowly(self, x: tf.Tensor, iterations: tf.Tensor) -> dict[str, tf.Tensor]:
        """The same after `iterations` empty loop steps: a request as slow as asked."""
        done = tf.while_loop(lambda i: i < iterations, lambda i: i + 1, [tf.constant(0, tf.int64)])
        # Adds 0, but keeps the loop in the graph: nothing else depends on it.
        return {"y": self.a * x + self.b + tf.cast(done - iterations, tf.float32)}


def write_version(base: Path, version: int, write: Callable[[Path], object]) -> Path:
    """Writes `base/version/` through a hidden directory, as a polling server needs."""
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
    write(staging / "saved_model")
    target = base / str(version)
    os.rename(staging / "saved_model", target)
    staging.rmdir()
    return target


def export_half_plus_two(base: Path, version: int, a: float = 0.5, b: float = 2.0) -> Path:
    """Exports half_plus_two (or y = a x + b) as `base/version/`; returns that directory."""
    module = HalfPlusTwo(a, b)
    signatures = {"serving_default": module.predict, "slowly": module.slowly}
    return write_version(
        base, version, lambda path: tf.saved_model.save(module, str(path), signatures=signatures)
    )


# The tiny U-Net the tests share: seeded, 4 filters, depth 2, no dropout, ISBI masks.
TINY = ModelConfig(filters=4, depth=2, padding="valid", dropout=0.0)
TINY_NORMALIZATION = NormalizationConfig("standardize", (120.0,), (40.0,), "uint8")
ISBI_MASKS = MaskConfig((0, 255))


def tiny_unet(
    config: ModelConfig = TINY,
    seed: int = 7,
    tile: tuple[int, int] = (92, 52),
    mask: MaskConfig = ISBI_MASKS,
) -> tuple[keras.Model, ModelRecord]:
    """A U-Net of `config` with weights from `seed`, and its record (ISBI masks by default)."""
    keras.utils.set_random_seed(seed)
    record = ModelRecord(mask, TINY_NORMALIZATION, config, tile)
    return build_unet(**config.to_dict()), record


def save_unet(path: Path, **options: object) -> Path:
    """`tiny_unet(**options)` saved as a `.keras` file with its record."""
    model, record = tiny_unet(**options)
    save_model(model, path, record)
    return path


def export_unet(folder: Path, version: int = UNET_VERSION) -> Path:
    """Exports the tiny U-Net under `folder/unet/`; returns the version's folder."""
    model_file = save_unet(folder / "model.keras")
    return export_model(model_file, folder / UNET, version, tile=76, max_pixels=10**7)


def registry_for(name: str, base: Path) -> ModelRegistry:
    """A registry of one model, its latest version aspired, not yet started."""
    registry = ModelRegistry()
    registry.apply([ModelEntry(name, str(base.absolute()))])
    return registry


def predict_request(
    model: str = HALF_PLUS_TWO, signature: str = "", **inputs: object
) -> predict_pb2.PredictRequest:
    """A PredictRequest with NumPy inputs (which make_tensor_proto puts in tensor_content)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def unet_request(
    signature: str = "", **inputs: tensor_pb2.TensorProto
) -> predict_pb2.PredictRequest:
    """A PredictRequest for the tiny U-Net with hand-built input tensors, sent as they are."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = UNET
    request.model_spec.signature_name = signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return request


def tensor(dtype: int, shape: list[int], **fields: object) -> tensor_pb2.TensorProto:
    """A TensorProto as a client may write it: any dtype, shape and value fields."""
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=size) for size in shape)
    return proto


def floats(*values: float) -> np.ndarray:
    """half_plus_two's input `x`."""
    return np.array(values, np.float32)


def served_alike(version: Path, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """A signature's outputs on TF Serving's loading path, checked equal, bit for bit, to
    TF2's loader's."""
    with SavedModelSession(version) as session:
        served = session.run(signature, inputs)
    function = tf.saved_model.load(str(version)).signatures[signature]
    defaults = {contract.METADATA_INPUT: np.int32(0)} if signature == contract.METADATA else {}
    loaded = {
        alias: np.asarray(value.numpy(), object if value.dtype == tf.string else None)
        for alias, value in function(**{**defaults, **inputs}).items()
    }
    assert served.keys() == loaded.keys()
    for alias, value in served.items():
        assert value.dtype == loaded[alias].dtype and value.shape == loaded[alias].shape
        # Strings (object arrays) by value; numbers by their bits.
        same = (
            value.tolist() == loaded[alias].tolist()
            if value.dtype == object
            else (value.tobytes() == loaded[alias].tobytes())
        )
        assert same, f"{signature}/{alias} differs"
    return served


def refused_alike(version: Path, signature: str, match: str, **inputs: np.ndarray) -> None:
    """A request that both TF Serving's loading path and TF2's loader refuse with
    INVALID_ARGUMENT, in words that match `match`."""
    import re

    with SavedModelSession(version) as session:
        try:
            session.run(signature, inputs)
        except TFStatusError as error:
            assert error.code_name == "INVALID_ARGUMENT" and re.search(match, error.message)
        else:
            raise AssertionError(f"TF Serving's path ran {signature} on a request to refuse")
    function = tf.saved_model.load(str(version)).signatures[signature]
    try:
        function(**{k: tf.constant(v) for k, v in inputs.items()})
    except tf.errors.InvalidArgumentError as error:
        assert re.search(match, error.message)
    else:
        raise AssertionError(f"TF2's loader ran {signature} on a request to refuse")


def write_garbage(path: Path) -> None:
    """A version directory whose saved_model.pb is no protocol buffer."""
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"\x00 not a SavedModel")


def random_images(count: int, shape: tuple[int, int] = (45, 61), seed: int = 0) -> np.ndarray:
    """Random uint8 (count, H, W, 1) images."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape, 1), dtype=np.uint8)


def certificates(folder: Path) -> dict[str, Path]:
    """A test CA, and certificates it signed for the server (localhost) and a client.

    Made in-process with `cryptography`, so TLS tests need no openssl command. Returns
    the paths of ca.pem, server.pem, server.key, client.pem and client.key in `folder`.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test-ca")).issuer_name(name("test-ca"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = {"ca.pem": folder / "ca.pem"}
    paths["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for serial, who in enumerate(("server", "client"), start=2):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder().subject_name(name("localhost" if who == "server" else who))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        paths[f"{who}.pem"] = folder / f"{who}.pem"
        paths[f"{who}.key"] = folder / f"{who}.key"
        paths[f"{who}.pem"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths[f"{who}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`unet-keras serve` in a subprocess, gRPC and REST on free ports; stderr goes to a log.

    `base` is a model base path, or a model config file (`*.config`) for several models.
    """

    def __init__(self, base: Path, name: str, log: Path, *flags: str) -> None:
        self.name = name
        self.address = f"127.0.0.1:{free_port()}"
        self.rest_address = f"127.0.0.1:{free_port()}"
        self.log = log
        command = [sys.executable, "-m", "unet_keras.cli", "serve"]
        if base.suffix == ".config":
            command += ["--model-config-file", str(base)]
        else:
            command += ["--model-base-path", str(base), "--model-name", name]
        command += ["--port", self.address.split(":")[1]]
        command += ["--rest-api-port", self.rest_address.split(":")[1], *flags]
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=REPOSITORY,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )

    @classmethod
    def attach(
        cls, process: subprocess.Popen, address: str, name: str, log: Path
    ) -> ServerProcess:
        """A server started some other way (launch.sh, other flags), gRPC at `address`."""
        server = cls.__new__(cls)
        server.process, server.address, server.name, server.log = process, address, name, log
        return server

    def wait_available(self, timeout: float = 60.0) -> None:
        """Waits until GetModelStatus reports a version AVAILABLE; fails with the log."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.name
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    status = stub.GetModelStatus(request, timeout=1)
                    if any(v.state == AVAILABLE for v in status.model_version_status):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.terminate()
        self.wait()
        raise RuntimeError(f"server for {self.name} not available:\n{self.log.read_text()}")

    def terminate(self) -> None:
        """Sends SIGTERM, which stops the server once its requests in flight are done."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Waits for the server to exit (kills it after 30 s); returns its exit status."""
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def write_models(folder: Path, serving_root: str) -> None:
    """Writes both test models and a models.config that names them under `serving_root`."""
    export_half_plus_two(folder / HALF_PLUS_TWO, HALF_PLUS_TWO_VERSION)
    export_unet(folder)
    labels = {HALF_PLUS_TWO: f'version_labels {{ key: "stable" value: {HALF_PLUS_TWO_VERSION} }} '}
    configs = "".join(
        f'  config {{ name: "{name}" base_path: "{serving_root}/{name}" '
        f'model_platform: "tensorflow" {labels.get(name, "")}}}\n'
        for name in (HALF_PLUS_TWO, UNET)
    )
    (folder / "models.config").write_text(f"model_config_list {{\n{configs}}}\n")
    (folder / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the test models for a real TF Serving."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the models")
    parser.add_argument(
        "--serving-root",
        help="the folder's path as the server sees it, e.g. /models in a container "
        "(default: the folder itself)",
    )
    args = parser.parse_args(argv)
    write_models(args.folder, args.serving_root or str(args.folder.resolve()))
    print(args.folder / "models.config")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The client's REST transport: the same calls as gRPC, over TF Serving's REST API.

Each gRPC request the shared operations make is sent as the REST call TF Serving maps it
to, and the JSON answer is turned back into the gRPC response, so every operation (retries,
waiting, tiling) is the same on both transports. Standard library only (`http.client`,
one keep-alive connection per thread), for networks that pass only HTTP/1.1.

TF Serving's REST Predict has no output filter, and its JSON carries no dtypes: the
client asks for the signature's metadata once per model, version or label, and signature,
to read the outputs with their dtypes, and drops the outputs it did not ask for. (For a
mask alone the shared operations use `segment_png` over REST: PNG both ways.) A hostile
or broken server cannot make it read more than `max_receive_bytes`, nor crash it: every
answer is checked and its failures raised as `ServingError`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import threading
import urllib.parse
from typing import Any

import grpc
from google.protobuf import json_format

from unet_keras import contract, rest_format
from unet_keras.client import messages
from unet_keras.client.config import ChannelConfig
from unet_keras.client.errors import ServingError, error_for
from unet_keras.client.tensors import make_ndarray, make_tensor_proto

# The gRPC code of each HTTP status TF Serving answers with (http_server.cc, inverted:
# 400 also stands for FAILED_PRECONDITION and OUT_OF_RANGE, 500 for UNKNOWN and DATA_LOSS).
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_DTYPES = {wire.name: wire for wire in contract.WIRE_TYPES}


class RestTransport:
    """Sends the client's gRPC requests as REST calls to HOST:PORT."""

    def __init__(self, target: str, channel: ChannelConfig) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a REST target is HOST:PORT, got {target!r}")
        self.host, self.port = host.strip("[]"), int(port)
        self.channel = channel
        if channel.server_name:
            raise ValueError("server_name is a gRPC override; REST checks the target's host")
        self._ssl = _ssl_context(channel) if channel.tls else None
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._signatures: dict[tuple[str, str, str], tuple[dict[str, str], dict[str, Any]]] = {}

    def close(self) -> None:
        """Closes every connection."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def call(self, method: messages.Method, request: Any, timeout: float) -> Any:
        """One gRPC-shaped call over REST; raises ServingError as the gRPC transport does."""
        if timeout <= 0:
            raise error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", method.path)
        if method is messages.GET_MODEL_STATUS:
            answer = self._send("GET", _model_path(request.model_spec), None, timeout, method)
            return self._parse(answer, messages.GetModelStatusResponse(), method)
        if method is messages.GET_MODEL_METADATA:
            path = _model_path(request.model_spec) + "/metadata"
            return self._metadata(self._send("GET", path, None, timeout, method), method)
        return self._predict(request, timeout, method)

    def _metadata(self, answer: Any, method: messages.Method) -> Any:
        try:
            signatures = json_format.ParseDict(
                answer["metadata"]["signature_def"],
                messages.SignatureDefMap(),
                ignore_unknown_fields=True,
            )
            response = messages.GetModelMetadataResponse()
            json_format.ParseDict(answer["model_spec"], response.model_spec)
        except (KeyError, TypeError, json_format.ParseError) as error:
            raise _bad_answer(method, f"not GetModelMetadata's JSON ({error!r})") from None
        packed = response.metadata[contract.METADATA_FIELD]
        packed.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        packed.value = signatures.SerializeToString()
        return response

    def _predict(self, request: Any, timeout: float, method: messages.Method) -> Any:
        spec = request.model_spec
        signature = spec.signature_name or contract.SEGMENT
        dtypes, defaults = self._signature(spec, signature, timeout)
        inputs = {}
        # REST needs every input; gRPC takes a signature's defaults for those left out.
        for alias, proto in {**defaults, **dict(request.inputs.items())}.items():
            array = make_ndarray(proto)
            inputs[alias] = rest_format.encode_tensor(array, as_bytes=True)
        body = rest_format.json_number_dumps({"signature_name": signature, "inputs": inputs})
        answer = self._send("POST", _model_path(spec) + ":predict", body, timeout, method)
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if outputs is None:
            raise _bad_answer(method, "no 'outputs' in the answer")
        if len(dtypes) == 1:
            outputs = {next(iter(dtypes)): outputs}
        if not isinstance(outputs, dict):
            raise _bad_answer(method, "'outputs' is not an object of named outputs")
        wanted = list(request.output_filter) or list(dtypes)
        response = messages.PredictResponse()
        response.model_spec.CopyFrom(spec)
        for alias in wanted:
            if alias not in outputs or alias not in dtypes:
                raise _bad_answer(method, f"no output {alias!r} in the answer")
            wire = _DTYPES.get(dtypes[alias])
            if wire is None or wire.numpy is None:
                raise _bad_answer(method, f"output {alias!r} has dtype {dtypes[alias]}")
            try:
                array = rest_format.decode_tensor(outputs[alias], wire.numpy)
            except rest_format.JsonTensorError as error:
                raise _bad_answer(method, f"output {alias!r}: {error}") from None
            response.outputs[alias].CopyFrom(make_tensor_proto(array))
        return response

    def _signature(
        self, spec: Any, signature: str, timeout: float
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """The signature's output dtypes and default inputs, asked for once per model,
        version or label, and signature."""
        choice = spec.WhichOneof("version_choice")
        which = "" if choice is None else str(getattr(spec, choice)).strip()
        key = (spec.name, which, signature)
        if key not in self._signatures:
            method = messages.GET_MODEL_METADATA
            path = _model_path(spec) + "/metadata"
            response = self._metadata(self._send("GET", path, None, timeout, method), method)
            found = messages.SignatureDefMap.FromString(
                response.metadata[contract.METADATA_FIELD].value
            ).signature_def
            if signature not in found:
                raise error_for(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{signature}" not found.',
                    messages.PREDICT.path,
                )
            outputs = found[signature].outputs
            dtypes = {alias: _dtype_name(info.dtype) for alias, info in sorted(outputs.items())}
            self._signatures[key] = (dtypes, dict(found[signature].defaults.items()))
        return self._signatures[key]

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._ssl is not None:
                connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _send(
        self, verb: str, path: str, body: str | None, timeout: float, method: messages.Method
    ) -> Any:
        """One HTTP exchange; the JSON answer, or the ServingError its status stands for."""
        data = None if body is None else body.encode()
        if data is not None and len(data) > self.channel.max_send_bytes:
            raise error_for(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request's JSON is {len(data)} bytes, above max_send_bytes "
                f"({self.channel.max_send_bytes})",
                method.path,
            )
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection = self._connection(timeout)
        try:
            connection.request(verb, path, body=data, headers=headers)
            reply = connection.getresponse()
            text = self._read(reply, method)
        except TimeoutError:
            connection.close()
            raise error_for(
                grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", method.path
            ) from None
        except (OSError, http.client.HTTPException) as error:
            connection.close()  # reconnects on the next call
            raise error_for(
                grpc.StatusCode.UNAVAILABLE, f"REST call failed: {error!r}", method.path
            ) from None
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            answer = None
        if reply.status != 200:
            code = _CODES.get(reply.status, grpc.StatusCode.UNKNOWN)
            message = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(message, str):
                message = f"HTTP {reply.status}: {text[:200].decode(errors='replace')}"
            raise error_for(code, message, method.path)
        if answer is None:
            raise _bad_answer(method, "the answer is not JSON")
        return answer

    def _read(self, reply: http.client.HTTPResponse, method: messages.Method) -> bytes:
        """The body, never more than max_receive_bytes of it."""
        limit = self.channel.max_receive_bytes
        told = reply.getheader("Content-Length")
        if told is not None and told.isdigit() and int(told) > limit:
            reply.close()
            raise error_for(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer is {told} bytes, above max_receive_bytes ({limit})",
                method.path,
            )
        text = reply.read(limit + 1)
        if len(text) > limit:
            reply.close()
            raise error_for(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer is larger than max_receive_bytes ({limit})",
                method.path,
            )
        return text

    def _parse(self, answer: Any, message: Any, method: messages.Method) -> Any:
        try:
            return json_format.ParseDict(answer, message, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, AttributeError) as error:
            what = f"not the JSON of {type(message).__name__} ({error})"
            raise _bad_answer(method, what) from None


def _model_path(spec: Any) -> str:
    """/v1/models/NAME[/versions/N | /labels/L] of a ModelSpec."""
    path = "/v1/models/" + urllib.parse.quote(spec.name, safe="")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        path += f"/versions/{spec.version.value}"
    elif choice == "version_label":
        path += "/labels/" + urllib.parse.quote(spec.version_label, safe="")
    return path


def _dtype_name(dtype: int) -> str:
    value = messages.POOL.FindEnumTypeByName("tensorflow.DataType").values_by_number.get(dtype)
    return value.name if value is not None else str(dtype)


def _bad_answer(method: messages.Method, what: str) -> ServingError:
    return error_for(grpc.StatusCode.INTERNAL, f"unreadable REST answer: {what}", method.path)


def _ssl_context(channel: ChannelConfig) -> ssl.SSLContext:
    """TLS as the gRPC channel has it: roots, client certificate, server name."""
    roots = channel.root_certificates
    context = ssl.create_default_context(cadata=roots.decode() if roots else None)
    if channel.private_key is not None:
        # ssl loads a certificate and key from files only; they exist for a moment.
        with tempfile.TemporaryDirectory() as folder:
            cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            with open(cert, "wb") as handle:
                handle.write(channel.certificate_chain)
            with open(key, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
                handle.write(channel.private_key)
            context.load_cert_chain(cert, key)
    return context

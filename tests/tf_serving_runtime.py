"""Load and run a SavedModel version the way `tensorflow_model_server` does, via TF's C API.

Covered, through TensorFlow's C API called with ctypes (the functions the wheel's
libtensorflow_cc.so.2 and libtensorflow_framework.so.2 export), not through TensorFlow's
Python loaders:

- the SavedModelBundle load: `TF_LoadSessionFromSavedModel` is the C++ `LoadSavedModel`
  that TF Serving's SavedModelBundle loader calls. It reads the MetaGraphDef tagged
  {"serve"}, creates a session (default SessionOptions) from its graph, runs the saver's
  restore op fed with the variables path, then runs the main/init op. Nothing links
  variables through the object graph as TF2's `tf.saved_model.load` does, so an export
  whose functions read variables that the restore op does not write fails here as it
  fails in TF Serving.
- a request: `Session::Run` (`TF_SessionRun`) fed and fetched by the SignatureDef's
  tensor names, with a serialized `RunOptions` (`timeout_in_ms` as TF Serving sets it
  from the request deadline); inputs missing from a request are filled from
  `SignatureDef.defaults` and unknown or missing aliases are refused, as TF's
  `saved_model::GetInputValues` (which TF Serving's Predict calls) does, with its
  messages; outputs by alias, all of them by default, as TF Serving's
  `PreProcessPrediction` does. Errors are TFStatusError (a RuntimeError) "CODE_NAME:
  message", from the TF_Status or worded as TF Serving's.

Not covered: the warmup replay (assets.extra/tf_serving_warmup_requests), the gRPC and
REST front ends and their tensor encodings (inputs here are numpy arrays passed
unchanged, with no dtype conversion; strings are object arrays of bytes, as numpy's
fixed-width "S" arrays drop trailing NULs), Predict's method_name and input-count checks,
request batching, the model version policy and reloads, TF Serving's own session options
(its thread pools, session config, the TFRT runtime), Grappler or other settings in which
TF Serving's build may differ from the wheel, and the exact TensorFlow version of a TF
Serving image unless this runs under that version.

Needs only tensorflow (for its library path, protos and dtype table), numpy and protobuf;
it imports nothing from `unet_keras`, and runs under TF 2.20 and 2.21. Command line:

    python tests/tf_serving_runtime.py VERSION_DIR --list
    python tests/tf_serving_runtime.py VERSION_DIR --signature NAME --inputs IN.npz \\
        --outputs OUT.npz [--timeout-ms N]
    python tests/tf_serving_runtime.py --jobs JOBS.json   # [{version_dir, signature,
                                                          #   inputs, outputs}, ...]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

__all__ = [
    "SavedModelSession",
    "TFStatusError",
    "describe",
    "library_path",
    "main",
    "run_files",
]

# TF_Code values, in order (tensorflow/c/tf_status.h).
_CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_INVALID_ARGUMENT, _NOT_FOUND, _FAILED_PRECONDITION = 3, 5, 9

_TF_STRING = 7
_TSTRING_SIZE = 24  # sizeof(TF_TString) on 64-bit platforms (tensorflow/core/platform/ctstring.h)
# TF_DataType values whose tensors are flat arrays that numpy can copy byte for byte.
_NUMERIC_TYPES = (1, 2, 3, 4, 5, 6, 8, 9, 10, 14, 17, 18, 19, 22, 23)

_P, _I, _I64, _SIZE = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_size_t


class _Output(ctypes.Structure):
    """TF_Output: {TF_Operation* oper; int index;}."""

    _fields_ = (("oper", _P), ("index", _I))


class _Buffer(ctypes.Structure):
    """TF_Buffer: {const void* data; size_t length; void (*data_deallocator)(void*, size_t);}."""

    _fields_ = (("data", _P), ("length", _SIZE), ("data_deallocator", _P))


_PORTS, _PTRS = ctypes.POINTER(_Output), ctypes.POINTER(_P)

# name: (restype, argtypes), as declared in tensorflow/c/c_api.h, tf_tensor.h, tf_tstring.h.
_PROTOTYPES = {
    "TF_NewStatus": (_P, ()),
    "TF_DeleteStatus": (None, (_P,)),
    "TF_GetCode": (_I, (_P,)),
    "TF_Message": (ctypes.c_char_p, (_P,)),
    "TF_NewBuffer": (_P, ()),
    "TF_NewBufferFromString": (_P, (ctypes.c_char_p, _SIZE)),
    "TF_DeleteBuffer": (None, (_P,)),
    "TF_NewSessionOptions": (_P, ()),
    "TF_DeleteSessionOptions": (None, (_P,)),
    "TF_NewGraph": (_P, ()),
    "TF_DeleteGraph": (None, (_P,)),
    "TF_GraphOperationByName": (_P, (_P, ctypes.c_char_p)),
    "TF_OperationNumOutputs": (_I, (_P,)),
    "TF_LoadSessionFromSavedModel": (
        _P,
        (_P, _P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), _I, _P, _P, _P),
    ),
    "TF_SessionRun": (None, (_P, _P, _PORTS, _PTRS, _I, _PORTS, _PTRS, _I, _PTRS, _I, _P, _P)),
    "TF_CloseSession": (None, (_P, _P)),
    "TF_DeleteSession": (None, (_P, _P)),
    "TF_AllocateTensor": (_P, (_I, ctypes.POINTER(_I64), _I, _SIZE)),
    "TF_DeleteTensor": (None, (_P,)),
    "TF_TensorMaybeMove": (_P, (_P,)),
    "TF_TensorType": (_I, (_P,)),
    "TF_NumDims": (_I, (_P,)),
    "TF_Dim": (_I64, (_P, _I)),
    "TF_TensorByteSize": (_SIZE, (_P,)),
    "TF_TensorData": (_P, (_P,)),
    "TF_StringInit": (None, (_P,)),
    "TF_StringCopy": (None, (_P, ctypes.c_char_p, _SIZE)),
    "TF_StringGetDataPointer": (_P, (_P,)),
    "TF_StringGetSize": (_SIZE, (_P,)),
    "TF_StringDealloc": (None, (_P,)),
}

# The TensorFlow wheel's shared libraries with C API functions. libtensorflow_cc exports
# the session, graph and TF_String functions (TF_LoadSessionFromSavedModel among them) and
# reaches the framework's through its dependency; libtensorflow_framework exports the
# status, buffer and tensor ones. Binding from the framework first names the library that
# defines each function (`_Api.sources`).
_LIBRARY_NAMES = (
    "libtensorflow_framework.so.2", "libtensorflow_cc.so.2",
    "libtensorflow_framework.2.dylib", "libtensorflow_cc.2.dylib",
)  # fmt: skip


class TFStatusError(RuntimeError):
    """A non-OK TF_Status: the message is "CODE_NAME: message", as TF Serving reports it."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.code_name = _CODE_NAMES[code] if 0 <= code < len(_CODE_NAMES) else str(code)
        self.message = message
        super().__init__(f"{self.code_name}: {message}")


class _Api:
    """The C API functions, each bound from whichever of the wheel's libraries exports it."""

    def __init__(self, libraries: Sequence[Path]) -> None:
        handles = [(path, ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)) for path in libraries]
        self.sources: dict[str, Path] = {}
        for name, (restype, argtypes) in _PROTOTYPES.items():
            for path, handle in handles:
                try:
                    function = getattr(handle, name)
                except AttributeError:
                    continue
                function.restype, function.argtypes = restype, argtypes
                setattr(self, name, function)
                self.sources[name] = path
                break
            else:
                found = ", ".join(str(path) for path in libraries)
                raise OSError(f"no TensorFlow library exports {name} (looked in: {found})")


def _library_candidates() -> list[Path]:
    """The wheel's C API libraries present, from tf.sysconfig.get_lib() and the package dir."""
    folders = [Path(tf.sysconfig.get_lib()), *(Path(folder) for folder in tf.__path__)]
    found: list[Path] = []
    for folder in folders:
        for name in _LIBRARY_NAMES:
            path = (folder / name).resolve()
            if path.is_file() and path not in found:
                found.append(path)
    if not found:
        raise OSError(f"no TensorFlow shared library ({', '.join(_LIBRARY_NAMES)}) in {folders}")
    return found


@functools.cache
def _api() -> _Api:
    return _Api(_library_candidates())


def library_path() -> Path:
    """The shared library that exports TF_LoadSessionFromSavedModel (libtensorflow_cc.so.2)."""
    return _api().sources["TF_LoadSessionFromSavedModel"]


def _check(api: _Api, status: int) -> None:
    code = api.TF_GetCode(status)
    if code != 0:
        message = (api.TF_Message(status) or b"").decode("utf-8", "replace")
        raise TFStatusError(code, message)


@functools.cache
def _dtype_tables() -> tuple[dict[int, np.dtype], dict[np.dtype, int]]:
    """TF_DataType value <-> numpy dtype for the numeric types (bfloat16 via ml_dtypes)."""
    to_numpy = {code: np.dtype(tf.as_dtype(code).as_numpy_dtype) for code in _NUMERIC_TYPES}
    return to_numpy, {dtype: code for code, dtype in to_numpy.items()}


def _dtype_name(code: int) -> str:
    try:
        return tf.as_dtype(code).name
    except TypeError:
        return f"DataType({code})"


def _string_items(array: np.ndarray) -> list[bytes]:
    items = []
    for item in array.ravel(order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):  # np.bytes_ is a bytes
            raise TypeError(f"a string tensor holds bytes or str, not {type(item).__name__}")
        items.append(item)
    return items


def _new_tensor(api: _Api, value: np.ndarray) -> int:
    """A TF_Tensor holding a copy of `value`; the caller frees it with _delete_fed_tensor."""
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        return _new_string_tensor(api, array)
    code = _dtype_tables()[1].get(array.dtype)
    if code is None:
        raise TypeError(f"no TensorFlow dtype for numpy dtype {array.dtype}")
    array = np.asarray(array, order="C")  # not ascontiguousarray: it makes scalars 1-d
    dims = (_I64 * array.ndim)(*array.shape)
    tensor = api.TF_AllocateTensor(code, dims, array.ndim, array.nbytes)
    if not tensor:
        raise MemoryError(f"TF_AllocateTensor failed for {array.dtype}{list(array.shape)}")
    if array.nbytes:
        ctypes.memmove(api.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor


def _new_string_tensor(api: _Api, array: np.ndarray) -> int:
    items = _string_items(array)
    dims = (_I64 * array.ndim)(*array.shape)
    tensor = api.TF_AllocateTensor(_TF_STRING, dims, array.ndim, len(items) * _TSTRING_SIZE)
    if not tensor:
        raise MemoryError(f"TF_AllocateTensor failed for string{list(array.shape)}")
    # TF_AllocateTensor leaves the memory uninitialised: every TF_TString is initialised
    # before any is filled, so that _delete_fed_tensor may free all of them.
    data = api.TF_TensorData(tensor) if items else None
    for index in range(len(items)):
        api.TF_StringInit(data + index * _TSTRING_SIZE)
    try:
        for index, item in enumerate(items):
            api.TF_StringCopy(data + index * _TSTRING_SIZE, item, len(item))
    except BaseException:
        _delete_fed_tensor(api, tensor)
        raise
    return tensor


def _delete_fed_tensor(api: _Api, tensor: int) -> None:
    """Frees a tensor made by _new_tensor, with the heap data of its strings."""
    if api.TF_TensorType(tensor) == _TF_STRING:
        count = api.TF_TensorByteSize(tensor) // _TSTRING_SIZE
        # TF_AllocateTensor's buffer frees its memory without running TF_TString's
        # destructor, so the strings' heap data is freed here, and only while this TF_Tensor
        # holds the buffer's only reference (TF_TensorMaybeMove says so): a buffer the
        # runtime kept (a variable assigned from the feed) leaks rather than dangles. TF
        # 2.20 and 2.21's TF_DeleteTensor does the same itself (TensorInterface::Release);
        # TF_StringDealloc resets the string it frees, so the second pass frees nothing.
        if count and api.TF_TensorMaybeMove(tensor):
            data = api.TF_TensorData(tensor)
            for index in range(count):
                api.TF_StringDealloc(data + index * _TSTRING_SIZE)
    api.TF_DeleteTensor(tensor)


def _to_numpy(api: _Api, tensor: int) -> np.ndarray:
    """A numpy copy of a fetched TF_Tensor (which stays the caller's to delete)."""
    code = api.TF_TensorType(tensor)
    shape = tuple(api.TF_Dim(tensor, axis) for axis in range(api.TF_NumDims(tensor)))
    count = int(np.prod(shape, dtype=np.int64))
    size = api.TF_TensorByteSize(tensor)
    if code == _TF_STRING:
        if size != count * _TSTRING_SIZE:  # TF sized it count * sizeof(tstring)
            raise ValueError(f"string tensor of shape {shape} holds {size} bytes")
        result = np.empty(count, dtype=object)
        data = api.TF_TensorData(tensor)
        for index in range(count):
            element = data + index * _TSTRING_SIZE
            length = api.TF_StringGetSize(element)
            pointer = api.TF_StringGetDataPointer(element)
            result[index] = ctypes.string_at(pointer, length) if length else b""
        return result.reshape(shape)
    dtype = _dtype_tables()[0].get(code)
    if dtype is None:
        raise TypeError(f"cannot convert a {_dtype_name(code)} tensor to numpy")
    result = np.empty(shape, dtype=dtype)
    if result.nbytes != size:
        raise ValueError(f"{dtype}{list(shape)} tensor holds {size} bytes, not {result.nbytes}")
    if size:
        ctypes.memmove(result.ctypes.data, api.TF_TensorData(tensor), size)
    return result


def _release(api: _Api, session: int, graph: int) -> None:
    status = api.TF_NewStatus()
    try:
        api.TF_CloseSession(session, status)
        api.TF_DeleteSession(session, status)  # frees the session even if Close failed
    finally:
        api.TF_DeleteGraph(graph)
        api.TF_DeleteStatus(status)


class SavedModelSession:
    """A SavedModel version loaded as tensorflow_model_server loads it (C++ LoadSavedModel)."""

    def __init__(self, export_dir: str | os.PathLike, tags: Sequence[str] = ("serve",)) -> None:
        """Loads `export_dir` with TF_LoadSessionFromSavedModel; TFStatusError on failure."""
        self._api = api = _api()
        self.export_dir = Path(export_dir)
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = {}
        tag_array = (ctypes.c_char_p * len(tags))(*(tag.encode() for tag in tags))
        options, meta_graph, status = api.TF_NewSessionOptions(), api.TF_NewBuffer(), None
        graph = api.TF_NewGraph()
        session = None
        try:
            status = api.TF_NewStatus()
            session = api.TF_LoadSessionFromSavedModel(
                options, None, os.fsencode(self.export_dir), tag_array, len(tags), graph,
                meta_graph, status,
            )  # fmt: skip
            _check(api, status)
            buffer = ctypes.cast(meta_graph, ctypes.POINTER(_Buffer)).contents
            meta_graph_def = meta_graph_pb2.MetaGraphDef.FromString(
                ctypes.string_at(buffer.data, buffer.length)
            )
            self.signature_defs = dict(meta_graph_def.signature_def)
        except BaseException:
            if session:
                _release(api, session, graph)
            else:
                api.TF_DeleteGraph(graph)
            raise
        finally:
            api.TF_DeleteBuffer(meta_graph)
            api.TF_DeleteSessionOptions(options)
            if status:
                api.TF_DeleteStatus(status)
        self._graph, self._session = graph, session
        # Frees the session if close() is never called (at the latest when Python exits).
        self._finalizer = weakref.finalize(self, _release, api, session, graph)

    def __enter__(self) -> SavedModelSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """TF_CloseSession, TF_DeleteSession and TF_DeleteGraph; later calls do nothing."""
        self._finalizer()

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef `name`; FAILED_PRECONDITION when there is none, as TF Serving says."""
        if name not in self.signature_defs:
            raise TFStatusError(_FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        timeout_ms: int = 0,
    ) -> dict[str, np.ndarray]:
        """Runs a signature with inputs by alias; returns numpy arrays by output alias."""
        if not self._finalizer.alive:
            raise ValueError("the session is closed")
        if isinstance(outputs, str):
            raise TypeError("outputs is a sequence of aliases, not one alias")
        api, definition = self._api, self.signature(signature)
        feeds = _input_values(definition, inputs)
        fetches = _output_names(definition, outputs)
        run_options = config_pb2.RunOptions(timeout_in_ms=timeout_ms).SerializeToString()
        ports_in = (_Output * len(feeds))(*(self._port(name) for name, _ in feeds))
        ports_out = (_Output * len(fetches))(*(self._port(name) for _, name in fetches))
        tensors_in = (_P * len(feeds))()
        tensors_out = (_P * len(fetches))()
        options = api.TF_NewBufferFromString(run_options, len(run_options))
        status = api.TF_NewStatus()
        try:
            for index, (_, value) in enumerate(feeds):
                tensors_in[index] = _new_tensor(api, value)
            api.TF_SessionRun(
                self._session, options, ports_in, tensors_in, len(feeds), ports_out,
                tensors_out, len(fetches), None, 0, None, status,
            )  # fmt: skip
            _check(api, status)
            return {alias: _to_numpy(api, tensors_out[i]) for i, (alias, _) in enumerate(fetches)}
        finally:
            # Fetched tensors first: one may share a fed tensor's buffer.
            for tensor in tensors_out:
                if tensor:
                    api.TF_DeleteTensor(tensor)
            for tensor in tensors_in:
                if tensor:
                    _delete_fed_tensor(api, tensor)
            api.TF_DeleteBuffer(options)
            api.TF_DeleteStatus(status)

    def _port(self, tensor_name: str) -> _Output:
        """The TF_Output of a tensor name "op_name:index" (index 0 when left out)."""
        op_name, _, index = tensor_name.rpartition(":")
        if not op_name or not index.isdigit():
            op_name, index = tensor_name, "0"
        operation = self._api.TF_GraphOperationByName(self._graph, op_name.encode())
        if not operation or int(index) >= self._api.TF_OperationNumOutputs(operation):
            raise TFStatusError(_NOT_FOUND, f"tensor {tensor_name} is not in the loaded graph")
        return _Output(operation, int(index))


def _tensor_name(alias: str, info: meta_graph_pb2.TensorInfo) -> str:
    if info.WhichOneof("encoding") != "name":
        kind = info.WhichOneof("encoding")
        raise TFStatusError(_INVALID_ARGUMENT, f"{alias}: {kind} tensors are not supported")
    return info.name


def _input_values(
    signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    """(tensor name, value) for every signature input, as saved_model::GetInputValues."""
    feeds = []
    for alias, info in signature.inputs.items():
        if alias in inputs:
            value = np.asarray(inputs[alias])
        elif alias in signature.defaults:
            value = tf.make_ndarray(signature.defaults[alias])
        else:
            raise TFStatusError(
                _INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sorted(inputs))}}}, or default input alias set: "
                f"{','.join(sorted(signature.defaults))}",
            )
        feeds.append((_tensor_name(alias, info), value))
    if set(inputs) - set(signature.inputs):
        raise TFStatusError(
            _INVALID_ARGUMENT,
            "Inputs contains invalid name. Used request inputs: "
            f"{','.join(sorted(set(inputs) & set(signature.inputs)))}, request input: "
            f"{','.join(sorted(inputs))}",
        )
    return feeds


def _output_names(
    signature: meta_graph_pb2.SignatureDef, outputs: Sequence[str] | None
) -> list[tuple[str, str]]:
    """(alias, tensor name) to fetch: `outputs`, or all of the signature's outputs."""
    aliases = list(signature.outputs) if outputs is None else list(outputs)
    fetches = []
    for alias in aliases:
        if alias not in signature.outputs:
            raise TFStatusError(
                _INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}.",
            )
        if any(alias == seen for seen, _ in fetches):
            raise TFStatusError(_INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        fetches.append((alias, _tensor_name(alias, signature.outputs[alias])))
    return fetches


def describe(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, dict]:
    """Signature name -> its inputs and outputs (alias: dtype, tensor name, shape), as JSON."""

    def tensors(infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, dict]:
        described = {}
        for alias, info in sorted(infos.items()):
            shape = info.tensor_shape
            described[alias] = {
                "dtype": _dtype_name(info.dtype),
                "name": info.name or None,
                "shape": None if shape.unknown_rank else [dim.size for dim in shape.dim],
            }
        return described

    return {
        name: {
            "method_name": definition.method_name,
            "inputs": tensors(definition.inputs),
            "outputs": tensors(definition.outputs),
            "defaults": sorted(definition.defaults),
        }
        for name, definition in sorted(signature_defs.items())
    }


def _from_npz(array: np.ndarray, info: meta_graph_pb2.TensorInfo | None) -> np.ndarray:
    """An .npz keeps bfloat16 as raw 2-byte void: viewed as the input's dtype again."""
    if array.dtype.kind == "V" and info is not None:
        dtype = _dtype_tables()[0].get(info.dtype)
        if dtype is not None and dtype.itemsize == array.dtype.itemsize:
            return array.view(dtype)
    return array


def run_files(
    version_dir: Path, signature: str, inputs: Path, outputs: Path, timeout_ms: int = 0
) -> None:
    """Runs a signature on the inputs of an .npz; writes its outputs to an .npz."""
    with SavedModelSession(version_dir) as session:
        definition = session.signature(signature)
        with np.load(inputs, allow_pickle=True) as stored:
            values = {
                alias: _from_npz(stored[alias], definition.inputs.get(alias))
                for alias in stored.files
            }
        results = session.run(signature, values, timeout_ms=timeout_ms)
    np.savez(outputs, **results)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: --list, one signature from an .npz into an .npz, or --jobs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, nargs="?", help="a SavedModel version")
    parser.add_argument("--list", action="store_true", help="print the signatures as JSON")
    parser.add_argument("--signature", help="the signature to run")
    parser.add_argument("--inputs", type=Path, help=".npz of the inputs by alias")
    parser.add_argument(
        "--outputs", type=Path, help=".npz to write the outputs to, by alias (bfloat16 as V2)"
    )
    parser.add_argument("--timeout-ms", type=int, default=0, help="RunOptions.timeout_in_ms")
    parser.add_argument(
        "--jobs",
        type=Path,
        help="a JSON list of {version_dir, signature, inputs, outputs}: many runs, one "
        "TensorFlow import",
    )
    args = parser.parse_args(argv)
    if args.jobs is not None:
        jobs = json.loads(args.jobs.read_text())
    elif args.version_dir is None:
        parser.error("give a version directory, or --jobs")
    elif args.list:
        jobs = []
    elif args.signature and args.inputs and args.outputs:
        jobs = [vars(args)]
    else:
        parser.error("give --list, or --signature with --inputs and --outputs")
    where = str(args.version_dir)
    try:
        if args.list:
            with SavedModelSession(args.version_dir) as session:
                print(json.dumps(describe(session.signature_defs), indent=2))
        for job in jobs:
            where = f"{job['version_dir']} {job['signature']}"
            run_files(
                Path(job["version_dir"]), job["signature"], Path(job["inputs"]),
                Path(job["outputs"]), job.get("timeout_ms", 0),
            )  # fmt: skip
    except (TFStatusError, TypeError, ValueError) as error:
        print(f"{where}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tests/tf_serving_runtime.py: a SavedModel loaded and run through TF's C API, as TF Serving
does, gives what TF2's loader gives; its errors are TF Serving's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.tf_serving_runtime import SavedModelSession, TFStatusError, library_path, main

HELPER = Path(__file__).with_name("tf_serving_runtime.py")
# Leading and trailing NULs, an empty string, one past TF_TString's 22-byte inline
# capacity (stored on the heap) and UTF-8.
STRINGS = [b"\x00a\x00", b"", b"x" * 40, "grüße".encode()]
# More steps than a run can do in seconds (about 7 µs each here): only a timeout ends it soon.
MANY_STEPS = 2_000_000


TEN = tf.constant(10.0)


class Probe(tf.Module):
    """One signature per feature of the helper."""

    def __init__(self) -> None:
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)
        # Saved as a tf.function with an input_signature, its tensor default is recorded in
        # SignatureDef.defaults.
        self.with_default = tf.function(
            lambda x, offset=TEN: {"y": x + offset},
            input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.float32)],
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, "x")])
    def affine(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b, "twice": 2 * x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.string)])
    def strings(self, text: tf.Tensor, suffix: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "joined": tf.strings.join([text, suffix]),
            "same": tf.identity(text),  # may share the fed tensor's buffer
            "length": tf.strings.length(text),
            "all": tf.strings.reduce_join(text, separator="|"),  # a 0-d string
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.uint8),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.bool),
            tf.TensorSpec([None], tf.float16),
            tf.TensorSpec([None], tf.bfloat16),
            tf.TensorSpec([], tf.float64),
        ]
    )
    def dtypes(self, u8, i64, flags, half, brain, scalar) -> dict[str, tf.Tensor]:
        return {
            "u8": u8 + 1,  # 255 wraps to 0
            "i64": i64 * -3,
            "flags": tf.logical_not(flags),
            "half": half * 3,
            "brain": tf.identity(brain),
            "scalar": scalar / 3,
        }

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64, "steps")])
    def slow(self, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        done, total = tf.while_loop(
            lambda i, total: i < steps,
            lambda i, total: (i + 1, total + tf.sin(tf.cast(i, tf.float32))),
            (tf.constant(0, tf.int64), tf.constant(0.0)),
        )
        return {"total": total, "done": done}


REQUESTS = {
    "affine": {"x": np.array([1.0, -2.5, 3e-8], np.float32)},
    "strings": {
        "text": np.array(STRINGS, dtype=object),
        "suffix": np.array(b"!", dtype=object),  # a scalar string: a 0-d object array
    },
    "dtypes": {
        "u8": np.array([[0, 7], [255, 128]], np.uint8).T,  # not C-contiguous
        "i64": np.array([2**40, -(2**62), 0], np.int64),
        "flags": np.array([True, False, True]),
        "half": np.array([1.5, -0.0, 6e-5], np.float16),
        "brain": np.array([1.0, 3.140625, -2.0], tf.bfloat16.as_numpy_dtype),
        "scalar": np.array(1.0),
    },
    "with_default": {"x": np.array([1.0, 2.0], np.float32)},
    "slow": {"steps": np.array(1000, np.int64)},
}
SIGNATURE_DEFAULTS = {"with_default": {"offset": 10.0}}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Probe module saved as version 1 with all its signatures."""
    probe = Probe()
    path = tmp_path_factory.mktemp("probe") / "1"
    signatures = {name: getattr(probe, name) for name in REQUESTS}
    tf.saved_model.save(probe, str(path), signatures=signatures)
    return path


@pytest.fixture(scope="module")
def session(version: Path):
    with SavedModelSession(version) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def reference(version: Path):
    """The version as TF2's object-graph loader loads it."""
    return tf.saved_model.load(str(version))


def assert_identical(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for alias, want in expected.items():
        have = got[alias]
        assert (have.dtype, have.shape) == (want.dtype, want.shape), alias
        if want.dtype == object:
            assert have.tolist() == want.tolist(), alias
        else:
            assert have.tobytes() == want.tobytes(), alias


def tf2_outputs(reference, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A signature's outputs under TF2's loader, which needs every input (no defaults)."""
    function = reference.signatures[name]
    defaults = function.structured_input_signature[1]
    feeds = {alias: tf.constant(value) for alias, value in inputs.items()}
    for alias in set(defaults) - set(inputs):
        feeds[alias] = tf.constant(SIGNATURE_DEFAULTS[name][alias], defaults[alias].dtype)
    outputs = function(**feeds)
    return {
        alias: np.array(tensor.numpy(), dtype=object if tensor.dtype == tf.string else None)
        for alias, tensor in outputs.items()
    }


def test_symbols_come_from_the_wheel():
    assert library_path().parent == Path(tf.sysconfig.get_lib()).resolve()
    assert library_path().name.startswith("libtensorflow_cc")


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_signature_outputs_match_tf2_loader_bit_for_bit(session, reference, name):
    got = session.run(name, REQUESTS[name])
    assert_identical(got, tf2_outputs(reference, name, REQUESTS[name]))


def test_values_are_the_expected_ones(session):
    strings = session.run("strings", REQUESTS["strings"])
    assert strings["joined"].tolist() == [s + b"!" for s in STRINGS]
    assert strings["same"].tolist() == STRINGS
    assert strings["all"].shape == () and strings["all"].item() == b"|".join(STRINGS)
    dtypes = session.run("dtypes", REQUESTS["dtypes"], outputs=["u8", "flags"])
    assert list(dtypes) == ["u8", "flags"]
    assert dtypes["u8"].tolist() == [[1, 0], [8, 129]]
    assert dtypes["flags"].tolist() == [False, True, False]
    assert session.run("affine", REQUESTS["affine"], ["y"])["y"].tolist() == [2.5, 0.75, 2.0]


def test_missing_input_takes_the_signature_default(session):
    assert list(session.signature_defs["with_default"].defaults) == ["offset"]
    x = REQUESTS["with_default"]["x"]
    assert session.run("with_default", {"x": x})["y"].tolist() == [11.0, 12.0]
    given = {"x": x, "offset": np.array(-1.0, np.float32)}
    assert session.run("with_default", given)["y"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda s: s.run("nope", {}), 'FAILED_PRECONDITION: Serving signature key "nope"'),
        (lambda s: s.run("affine", {}), "INVALID_ARGUMENT: Signature input alias: x(feed"),
        (
            lambda s: s.run("affine", {**REQUESTS["affine"], "z": 1}),
            "INVALID_ARGUMENT: Inputs contains invalid name. Used request inputs: x, "
            "request input: x,z",
        ),
        (
            lambda s: s.run("affine", REQUESTS["affine"], ["y", "y"]),
            "INVALID_ARGUMENT: duplicate output tensor alias: y",
        ),
        (
            lambda s: s.run("affine", REQUESTS["affine"], ["w"]),
            "INVALID_ARGUMENT: output tensor alias not found in signature: w",
        ),
        # No conversion, as a gRPC TensorProto of the wrong dtype gets none.
        (lambda s: s.run("affine", {"x": np.zeros(2)}), "INVALID_ARGUMENT: Expects arg[0] to"),
    ],
)
def test_bad_requests_are_refused_with_tf_status(session, call, expected):
    with pytest.raises(TFStatusError, match="^" + re.escape(expected)):
        call(session)


def test_timeout_ends_a_slow_run_with_deadline_exceeded(session):
    start = time.perf_counter()
    with pytest.raises(TFStatusError, match=r"^DEADLINE_EXCEEDED") as raised:
        session.run("slow", {"steps": np.array(MANY_STEPS)}, timeout_ms=100)
    assert raised.value.code == 4 and time.perf_counter() - start < 5
    # The session still serves afterwards, and a generous timeout does not fire.
    assert session.run("slow", REQUESTS["slow"], timeout_ms=60_000)["done"] == 1000


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a SavedModel\n" * 10, "DATA_LOSS: Can't parse {}/saved_model.pb as binary proto"),
        (None, "NOT_FOUND: Could not find SavedModel .pb or .pbtxt at supplied export"),
    ],
)
def test_unloadable_version_names_the_problem(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "saved_model.pb").write_bytes(content)
    with pytest.raises(TFStatusError, match="^" + re.escape(expected.format(tmp_path))):
        SavedModelSession(tmp_path)


def test_tags_that_no_meta_graph_has_are_not_found(version):
    with pytest.raises(TFStatusError, match=r"^NOT_FOUND: .* matching supplied tags: \{ gpu \}"):
        SavedModelSession(version, tags=["gpu"])


def test_keras_model_held_by_the_module_loads_in_tf2_but_not_in_tf_serving(tmp_path):
    """The pitfall the helper exists for: a tracked Keras 3 model exports each variable
    twice, the checkpoint's and the one its traced functions read; TF2's loader links
    them through the object graph, the session loader only restores the checkpoint's."""
    import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
    module = tf.Module()
    module.model = model
    module.serve = tf.function(
        lambda x: {"y": module.model(x)},
        input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, "x")],
    )
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.serve})
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32)
    served = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    assert served(x=tf.constant(x))["y"].numpy().tobytes() == model(x).numpy().tobytes()
    failure = r"^FAILED_PRECONDITION: Could not find variable"
    with SavedModelSession(tmp_path / "1") as session, pytest.raises(TFStatusError, match=failure):
        session.run("serving_default", {"x": x})


def test_closed_session_refuses_to_run(version):
    session = SavedModelSession(version)
    session.close()
    session.close()
    with pytest.raises(ValueError, match="closed"):
        session.run("affine", REQUESTS["affine"])


def test_list_prints_signatures_as_json(version, capsys):
    assert main([str(version), "--list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["strings"]["inputs"]["suffix"] == {
        "dtype": "string", "name": "strings_suffix:0", "shape": []
    }  # fmt: skip
    assert listed["affine"]["outputs"]["y"]["dtype"] == "float32"
    assert listed["with_default"]["defaults"] == ["offset"]


def test_command_line_keeps_bfloat16_through_npz(version, session, tmp_path):
    """An .npz stores bfloat16 as 2-byte void; the inputs are viewed as the signature's."""
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, **REQUESTS["dtypes"])
    assert main([str(version), "--signature", "dtypes", "--inputs", str(inputs),
                 "--outputs", str(outputs)]) == 0  # fmt: skip
    expected = session.run("dtypes", REQUESTS["dtypes"])
    with np.load(outputs) as stored:
        assert stored["brain"].tobytes() == expected["brain"].tobytes()
        assert stored["u8"].tolist() == expected["u8"].tolist()


def test_command_line_runs_a_signature_in_another_process(version, reference, tmp_path):
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, **REQUESTS["strings"])
    command = [sys.executable, str(HELPER), str(version), "--signature", "strings"]
    command += ["--inputs", str(inputs), "--outputs", str(outputs), "--timeout-ms", "60000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(outputs, allow_pickle=True) as stored:
        got = {alias: stored[alias] for alias in stored.files}
    assert_identical(got, tf2_outputs(reference, "strings", REQUESTS["strings"]))

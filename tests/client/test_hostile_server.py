"""A hostile server cannot crash the client, make it allocate what it did not send, or
have a wrong answer written as a mask."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.client.conftest import FAST_RETRY
from tests.client.fake_serving import FakeServing
from unet_keras.client import SegmentationClient, ServingError, make_tensor_proto, messages
from unet_keras.client import command as client_cli

DT = messages.enum_values("tensorflow.DataType")


def response(**outputs: Any) -> Any:
    """A PredictResponse holding `outputs` (TensorProtos or arrays)."""
    made = messages.PredictResponse()
    for name, value in outputs.items():
        proto = value if isinstance(value, messages.TensorProto) else make_tensor_proto(value)
        made.outputs[name].CopyFrom(proto)
    return made


def claim(shape: list[int], dtype: str = "DT_UINT8", **fields: Any) -> Any:
    """A TensorProto that claims `shape` and carries only `fields`."""
    proto = messages.TensorProto(dtype=DT[dtype], **fields)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=size) for size in shape)
    return proto


def test_a_mask_of_the_wrong_size_is_refused_not_stretched(fake: FakeServing) -> None:
    fake.answer = lambda request: response(mask=np.zeros((1, 1, 1), np.uint8))
    with (
        SegmentationClient(fake.address, retry=FAST_RETRY) as client,
        pytest.raises(
            ValueError, match=r"answered a 64x64 image with a mask of shape \[1, 1, 1\]"
        ),
    ):
        client.segment(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize("shape", [[1, 20000, 20000], [1, 10**6, 10**6], [2**62, 2**62]])
def test_a_claimed_shape_costs_nothing(fake: FakeServing, shape: list[int]) -> None:
    fake.answer = lambda request: response(mask=claim(shape))
    assert fake.answer(None).ByteSize() < 40
    tracemalloc.start()
    try:
        with (
            SegmentationClient(fake.address, retry=FAST_RETRY) as client,
            pytest.raises(ValueError, match="carries 0"),
        ):
            client.segment(np.zeros((64, 64), np.uint8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_the_command_names_the_bad_answer_in_one_line_and_writes_nothing(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake.answer = lambda request: response(mask=claim([1, 10**6, 10**6]))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    arguments = ["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    assert client_cli.main([*arguments, "--server", fake.address]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "a.png" in error[0] and "carries 0" in error[0]
    assert not list((tmp_path / "out").iterdir())


TENSORS = st.builds(
    lambda dtype, shape, payload, typed: (dtype, shape, payload, typed),
    st.sampled_from(["DT_UINT8", "DT_FLOAT", "DT_STRING", "DT_INT64", "DT_RESOURCE", "DT_HALF"]),
    st.lists(st.integers(-2, 2**40), max_size=4),
    st.binary(max_size=64),
    st.lists(st.integers(0, 255), max_size=16),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mask=TENSORS, probabilities=st.none() | TENSORS, name=st.sampled_from(["mask", "other"]))
def test_fuzzed_answers_give_a_result_or_a_clear_error(
    fake: FakeServing, mask: tuple, probabilities: tuple | None, name: str
) -> None:
    def proto(spec: tuple) -> Any:
        dtype, shape, payload, typed = spec
        made = claim([max(size, -1) for size in shape], dtype)
        if dtype == "DT_STRING":
            made.string_val.append(payload)
        elif dtype in ("DT_FLOAT", "DT_HALF"):
            made.tensor_content = payload
        else:
            made.int_val.extend(typed)
        return made

    outputs = {name: proto(mask)}
    if probabilities is not None:
        outputs["probabilities"] = proto(probabilities)
    fake.answer = lambda request: response(**outputs)
    with SegmentationClient(fake.address, retry=FAST_RETRY, timeout=5) as client:
        try:
            result = client.segment(np.zeros((4, 4), np.uint8), probabilities=True)
        except (ValueError, ServingError):
            return
    assert result.mask.shape == (4, 4)

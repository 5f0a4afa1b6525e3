"""unet_keras.rest_format: TF Serving's JSON tensors, read and written as json_tensor.cc does."""

import json

import numpy as np
import pytest

from unet_keras.rest_format import (
    JsonTensorError,
    decode_tensor,
    encode_tensor,
    is_bytes_output,
    json_number_dumps,
    shown,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([[0.1, -2.5e-7], [np.nan, np.inf]], np.float32),
        np.array([1, -(2**40)], np.int64),
        np.array([True, False]),
        np.array(3.5, np.float64),
    ],
)
def test_a_tensor_survives_json_both_ways(array: np.ndarray) -> None:
    text = json_number_dumps(encode_tensor(array))
    back = decode_tensor(json.loads(text), array.dtype)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_bytes_are_base64_when_named_so_and_text_otherwise() -> None:
    values = np.array([b"\x89PNG\x00", b"plain"], object)
    assert encode_tensor(values, as_bytes=True) == [{"b64": "iVBORwA="}, {"b64": "cGxhaW4="}]
    # Not UTF-8: base64 even when not asked (TF Serving writes JSON no parser reads).
    assert encode_tensor(values) == [{"b64": "iVBORwA="}, "plain"]
    back = decode_tensor([{"b64": "iVBORwA="}, "plain"], np.dtype(object))
    assert list(back) == [b"\x89PNG\x00", b"plain"]
    assert is_bytes_output("mask_png_bytes") and not is_bytes_output("mask_png")


def _nested(depth: int) -> list:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        ([[1, 2], [3]], np.uint8, "Encountered list at unexpected size: 1 at level: 1"),
        ([1, [2]], np.float32, "Encountered list at unexpected level"),
        ([[1, 2], 3], np.float32, "found at incorrect level: 2"),
        ([1.5], np.uint8, "JSON Value: 1.5 Type: double is not of expected type: uint8"),
        ([True], np.float32, "Type: bool is not of expected type: float"),
        (["7"], np.int32, "Type: string is not of expected type: int32"),
        ([None], np.float32, "Type: null"),
        ([256], np.uint8, "256 is out of the range of uint8"),
        ([{"b64": "not base64!"}], object, "Unable to base64 decode"),
        ([{"b64": "aGk=", "x": 1}], object, "not formatted correctly for base64 data"),
        ([3], object, "is not of expected type: string"),
        # What crashed the server before (issue 31): each is a tensor error now.
        ([10**400], np.float32, "Number too big to be stored in double."),
        (["\ud800"], object, "not valid UTF-8 text"),
        (_nested(65), np.float32, "nested 65 levels deep; a tensor may have at most 64"),
    ],
)
def test_what_is_no_tensor_of_the_dtype_is_refused_with_tf_servings_words(
    value: object, dtype: type, message: str
) -> None:
    with pytest.raises(JsonTensorError, match=message.replace("[", r"\[")):
        decode_tensor(value, np.dtype(dtype))


def test_a_huge_value_is_cut_in_the_error_message() -> None:
    with pytest.raises(JsonTensorError) as raised:
        decode_tensor([["x" * 10_000]], np.dtype(np.float32))
    assert len(str(raised.value)) < 400


def test_a_scalar_and_64_dimensions_still_decode() -> None:
    assert decode_tensor(7, np.dtype(np.int64)).shape == ()
    assert decode_tensor(_nested(64), np.dtype(np.float32)).ndim == 64
    # An int a double holds but float32 does not: infinity, as TF Serving's cast gives.
    with np.errstate(over="ignore"):
        assert np.isinf(decode_tensor([10**300], np.dtype(np.float32))[0])


def test_a_value_too_deep_to_show_still_gets_a_message() -> None:
    assert shown(_nested(100_000)).startswith("[[[")

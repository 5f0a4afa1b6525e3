"""unet_keras.io.context: a section and its neighbours as channels, mirrored at the ends."""

from __future__ import annotations

import numpy as np
import pytest

from unet_keras.io.context import check_stack, context_indices, stacked_normalization, with_context
from unet_keras.io.sample import DataError
from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig, TileSizes


def test_neighbours_are_mirrored_past_the_stacks_ends() -> None:
    assert context_indices(5, 2, 2) == [0, 1, 2, 3, 4]
    assert context_indices(5, 0, 2) == [2, 1, 0, 1, 2]
    assert context_indices(5, 4, 1) == [3, 4, 3]
    assert context_indices(2, 1, 2) == [1, 0, 1, 0, 1]


def test_channels_are_ordered_by_offset_each_with_the_sections_own() -> None:
    stack = np.arange(4 * 2 * 3 * 2).reshape(4, 2, 3, 2)  # 4 sections of 2 channels
    context = with_context(stack, 1, 1)
    assert context.shape == (2, 3, 6)
    np.testing.assert_array_equal(context, np.concatenate([stack[0], stack[1], stack[2]], -1))
    np.testing.assert_array_equal(with_context(stack, 3, 0), stack[3])


def test_a_lone_image_is_refused_by_name_when_the_model_wants_context() -> None:
    check_stack(1, 0, "a.png")
    check_stack(2, 1, "stack.tif")
    with pytest.raises(DataError, match=r"a\.png: a lone image, but the model sees 1 section"):
        check_stack(1, 1, "a.png")


def test_the_record_keeps_k_and_checks_the_channels() -> None:
    normalization = stacked_normalization(NormalizationConfig("standardize", (5.0,), (2.0,)), 2)
    assert normalization.offset == (5.0,) * 5 and normalization.scale == (2.0,) * 5
    record = ModelRecord(
        MaskConfig((0, 255)), normalization, ModelConfig(in_channels=5), TileSizes(92, 4), None,
        "all", 2,
    )  # fmt: skip
    assert record.section_channels == 1
    assert ModelRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="in_channels 4 is not 2 \\* context_sections \\+ 1"):
        ModelRecord.from_dict({**record.to_dict(), "model": {"in_channels": 4}})
    # Records from before the field: no context.
    old = {key: value for key, value in record.to_dict().items() if key != "context_sections"}
    assert ModelRecord.from_dict({**old, "model": {"in_channels": 1}}).context_sections == 0

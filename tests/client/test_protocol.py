"""unet_keras.client.protocol: what is read from a response is checked, and which windows
an image is sent in."""

import json

import numpy as np
import pytest

from tests.client.fake_serving import model_record
from unet_keras.client import ChannelConfig, make_tensor_proto, messages, protocol


def metadata_response(text: bytes) -> object:
    response = messages.PredictResponse()
    response.outputs["metadata"].CopyFrom(make_tensor_proto(np.array(text, object)))
    return response


def test_a_record_is_read_and_checked():
    record = model_record()
    text = json.dumps(record.to_dict()).encode()
    assert protocol.record(metadata_response(text)) == record
    for hostile in (b"{not json", json.dumps({"mask": {}}).encode(), b"[1, 2]"):
        with pytest.raises(ValueError, match="the model's record is not readable"):
            protocol.record(metadata_response(hostile))
    with pytest.raises(ValueError, match="no scalar 'metadata' output"):
        protocol.record(messages.PredictResponse())


def test_a_newer_models_record_fields_are_left_unread_with_a_warning(caplog):
    """An older client keeps working with a model exported by a later version."""
    record = model_record()
    text = json.dumps({**record.to_dict(), "added_later": [1, 2]}).encode()
    with caplog.at_level("WARNING", logger=protocol.__name__):
        assert protocol.record(metadata_response(text)) == record
    assert "does not know, left unread: ['added_later']" in caplog.text


def test_windows_fit_the_message_limits_with_the_models_reach():
    layout = protocol.layout(model_record(), None, None)
    assert (layout.context, layout.grid, layout.classes) == (107, 16, 1)
    image = np.zeros((1000, 700, 1), np.uint8)
    roomy = ChannelConfig()
    assert protocol.fits_one_request(image, roomy)
    assert len(protocol.windows_for(image, roomy, layout, probabilities=True)) == 1
    tight = ChannelConfig(max_send_bytes=400_000, max_receive_bytes=400_000)
    windows = protocol.windows_for(image, tight, layout, probabilities=True)
    limit = protocol.max_window_pixels(image, tight, classes=1)
    assert len(windows) > 1
    assert all(
        (w.rows.stop - w.rows.start) * (w.cols.stop - w.cols.start) <= limit for w in windows
    )
    with pytest.raises(ValueError, match="leave no room for pixels"):
        protocol.max_window_pixels(image, ChannelConfig(max_send_bytes=100), classes=1)

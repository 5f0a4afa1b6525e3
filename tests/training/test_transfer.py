"""Starting from trained weights: every kind of source, shape checks, a frozen encoder."""

import dataclasses

import keras
import numpy as np
import pytest

import unet_keras.training.fit  # noqa: F401  (registers the losses compiled models need)
from tests.serving_fixtures import TINY, export_unet, save_unet, tiny_unet
from unet_keras.training.transfer import FreezeEncoder, encoder_frozen, initialize


def _same_weights(one: keras.Model, other: keras.Model) -> bool:
    return all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(one.weights, other.weights, strict=True)
    )


@pytest.mark.parametrize("kind", ["keras file", "run directory", "export"])
def test_weights_come_from_a_model_file_a_run_or_an_export(tmp_path, kind):
    trained, _ = tiny_unet(seed=1)
    if kind == "keras file":
        source = save_unet(tmp_path / "model.keras", seed=1)
    elif kind == "run directory":
        source = save_unet(tmp_path / "best.keras", seed=1).parent
    else:
        source = export_unet(tmp_path)  # the seed-7 network
        trained, _ = tiny_unet()
    fresh, record = tiny_unet(seed=2)
    assert not _same_weights(fresh, trained)
    assert initialize(fresh, record.model, str(source)).model == TINY
    assert _same_weights(fresh, trained)


def test_a_network_of_another_shape_is_refused_naming_what_differs(tmp_path):
    source = save_unet(tmp_path / "model.keras")
    wider = dataclasses.replace(TINY, filters=TINY.filters * 2)
    fresh, _ = tiny_unet(config=wider, seed=2)
    before = [w.numpy().copy() for w in fresh.weights]
    with pytest.raises(
        ValueError, match=rf"--filters {TINY.filters} there, {2 * TINY.filters} here"
    ):
        initialize(fresh, wider, str(source))
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, fresh.weights, strict=True))
    with pytest.raises(FileNotFoundError, match="no such model file"):
        initialize(fresh, wider, str(tmp_path / "missing.keras"))


def test_a_network_seeing_other_sections_is_refused_naming_both(tmp_path):
    """--context-sections: 3 channels of one section's colours and 3 sections of grey fit
    the same weights, but mean other things."""
    grey = save_unet(tmp_path / "grey.keras")
    colour = save_unet(tmp_path / "colour.keras", config=dataclasses.replace(TINY, in_channels=3))
    stacked = dataclasses.replace(TINY, in_channels=3)
    fresh, _ = tiny_unet(config=stacked, seed=2)
    before = [w.numpy().copy() for w in fresh.weights]
    with pytest.raises(ValueError) as refusal:
        initialize(fresh, stacked, str(grey), context_sections=1)
    assert str(refusal.value) == (
        f"--init-from {grey}: its network takes 1 input channel(s), 1 section(s) of 1 "
        "(--context-sections 0) there, 3 input channel(s), 3 section(s) of 1 "
        "(--context-sections 1) here; train with its --context-sections on data of its channels"
    )
    with pytest.raises(ValueError, match=r"3 section\(s\) of 1 \(--context-sections 1\) here"):
        initialize(fresh, stacked, str(colour), context_sections=1)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, fresh.weights, strict=True))
    # The same meaning loads.
    assert initialize(fresh, stacked, str(colour)).model == stacked


def test_the_encoder_stays_fixed_for_the_first_epochs_only():
    model, _ = tiny_unet()
    model.compile(keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    images = np.random.default_rng(0).normal(size=(4, 92, 92, 1)).astype("float32")
    targets = (np.random.default_rng(1).random((4, 52, 52, 1)) > 0.5).astype("float32")

    def snapshot(prefix: str) -> list[np.ndarray]:
        layers = [layer for layer in model.layers if layer.name.startswith(prefix)]
        return [w.numpy().copy() for layer in layers for w in layer.weights]

    encoder, decoder = snapshot("down"), snapshot("up")
    freeze = FreezeEncoder(epochs=1)
    model.fit(images, targets, epochs=1, batch_size=2, callbacks=[freeze], verbose=0)
    assert encoder_frozen(model)
    assert all(np.array_equal(a, b) for a, b in zip(encoder, snapshot("down"), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(decoder, snapshot("up"), strict=True))
    model.fit(
        images, targets, initial_epoch=1, epochs=2, batch_size=2, callbacks=[freeze], verbose=0
    )
    assert not encoder_frozen(model)
    assert not all(np.array_equal(a, b) for a, b in zip(encoder, snapshot("down"), strict=True))


@pytest.mark.slow
def test_fine_tuning_the_shipped_model_on_a_little_data(synthetic_data, tmp_path):
    """`train --init-from isbi2012-membranes` with the encoder frozen: training starts from
    the shipped weights, moves only the decoder in the frozen epoch; the run's model keeps
    the shipped network and mask convention, standardised to its own data as the shipped
    one was to its data."""
    from unet_keras.cli import main
    from unet_keras.saving import load_model, pretrained

    shipped, shipped_record = pretrained("isbi2012-membranes")
    run = tmp_path / "run"
    argv = ["train", "--data", str(synthetic_data), "--run-dir", str(run)]
    argv += ["--init-from", "isbi2012-membranes", "--freeze-encoder", "1", "--tile", "64"]
    argv += ["--epochs", "1", "--steps-per-epoch", "2", "--validation", "1", "--batch-size", "1"]
    assert main(argv) == 0
    tuned, record = load_model(run / "last.keras")
    assert record.model == shipped_record.model
    assert record.normalization.method == shipped_record.normalization.method == "standardize"
    assert record.normalization.offset != shipped_record.normalization.offset
    assert record.mask == shipped_record.mask

    def weights(model: keras.Model, prefix: str) -> list[np.ndarray]:
        return [w.numpy() for layer in model.layers if layer.name.startswith(prefix)
                for w in layer.weights]  # fmt: skip

    assert all(
        np.array_equal(a, b)
        for a, b in zip(weights(shipped, "down"), weights(tuned, "down"), strict=True)
    )
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(weights(shipped, "up"), weights(tuned, "up"), strict=True)
    )

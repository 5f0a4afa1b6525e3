"""Batch normalisation's statistics gathered for the averaged weights: the mean over the
batches of each batch's own, the weights untouched; training keeps them in best.keras."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from unet_keras.model import FusedBatchNormalization
from unet_keras.saving import load_model
from unet_keras.training.batch_statistics import refit_batch_statistics


def _normalizer(layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input((4, 4, 2))
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("kind", [FusedBatchNormalization, keras.layers.BatchNormalization])
def test_the_statistics_are_the_mean_of_the_batches(kind) -> None:
    layer = kind(momentum=0.9)
    model = _normalizer(layer)
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0 * k, 1.0 + k, (2, 4, 4, 2)).astype(np.float32) for k in range(4)]
    gamma, beta = layer.gamma.numpy().copy(), layer.beta.numpy().copy()
    targets = np.zeros((2, 4, 4, 1), np.float32)
    assert refit_batch_statistics(model, [(b, targets) for b in batches], steps=3) == 1
    used = batches[:3]  # `steps` of them
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in used], axis=0)
    variances = np.mean([b.var(axis=(0, 1, 2)) for b in used], axis=0)
    np.testing.assert_allclose(layer.moving_mean.numpy(), means, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variances, rtol=1e-4)
    assert layer.momentum == 0.9
    np.testing.assert_array_equal(layer.gamma.numpy(), gamma)
    np.testing.assert_array_equal(layer.beta.numpy(), beta)


def test_a_network_without_batch_normalisation_is_left_alone() -> None:
    model = _normalizer(keras.layers.ReLU())
    assert refit_batch_statistics(model, [(np.ones((1, 4, 4, 2), np.float32), None)]) == 0
    with pytest.raises(ValueError, match="no batches"):
        refit_batch_statistics(_normalizer(keras.layers.BatchNormalization()), [])


def test_training_keeps_the_average_with_statistics_of_its_own(
    tmp_path: Path, synthetic_data: Path
) -> None:
    from unet_keras.training.fit import fit
    from unet_keras.training.training_settings import TrainConfig

    run = tmp_path / "run"
    config = TrainConfig.from_dict(
        {
            "data": str(synthetic_data),
            "run_dir": str(run),
            "validation": 1,
            "tile": 64,
            "epochs": 2,
            "steps_per_epoch": 2,
            "model": {"filters": 4, "depth": 2},
        }
    )
    fit(config)
    kept, _ = load_model(run / "best.keras")
    average, _ = load_model(run / "average.keras")
    for mine, theirs in zip(kept.weights, average.weights, strict=True):
        if "moving" in mine.path:
            assert not np.allclose(mine.numpy(), theirs.numpy()), mine.path
        else:
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert json.loads((run / "summary.json").read_text())["kept_epoch"] == 2

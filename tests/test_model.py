"""Tests for unet_keras.model: size arithmetic, architecture, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet_keras.geometry import (
    output_size,
)
from unet_keras.model import FusedBatchNormalization, build_unet
from unet_keras.record import ModelConfig


def run(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Inference without `predict`'s per-call graph tracing, which dominates on tiny models."""
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_tiny_valid_unet_maps_572_to_388():
    model = build_unet(filters=2)
    out = run(model, np.zeros((1, 572, 572, 1), "float32"))
    assert out.shape == (1, 388, 388, 1)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_one_model_runs_on_several_sizes(padding):
    model = build_unet(in_channels=2, classes=3, depth=2, filters=2, padding=padding)
    for size in (44, 60) if padding == "valid" else (16, 32):
        out = run(model, np.random.rand(2, size, size + 16, 2).astype("float32"))
        expected = (output_size(size, 2, padding), output_size(size + 16, 2, padding))
        assert out.shape == (2, *expected, 3)
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_layers_are_named_and_output_is_float32_probability():
    model = build_unet(depth=2, filters=2)
    names = {layer.name for layer in model.layers}
    assert {"down1_conv1", "down2_pool", "bottom_conv2", "up2_upconv", "up1_crop"} <= names
    assert {"up1_concat", "down2_dropout", "bottom_dropout", "output"} <= names
    output = model.get_layer("output")
    assert output.dtype_policy.compute_dtype == "float32"
    out = run(model, np.random.rand(1, 44, 44, 1).astype("float32"))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_same_padding_has_no_crop_and_dropout_zero_has_no_dropout():
    model = build_unet(depth=2, filters=2, padding="same", dropout=0.0)
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if "crop" in n or "dropout" in n]


def test_mixed_precision_keeps_float32_output():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(depth=2, filters=2, padding="same")
        assert model.get_layer("down1_conv1").compute_dtype == "float16"
        out = model(np.zeros((1, 16, 16, 1), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def expected_params(in_channels, classes, depth, filters, batch_norm):
    """Parameter count derived from the paper's layer list."""

    def conv(cin, cout, k=3):
        bias = 0 if batch_norm else cout
        return k * k * cin * cout + bias + (4 * cout if batch_norm else 0)

    widths = [in_channels] + [filters * 2**level for level in range(depth + 1)]
    total = 0
    for level in range(1, depth + 2):  # the contracting levels and the bottleneck
        total += conv(widths[level - 1], widths[level]) + conv(widths[level], widths[level])
    for level in range(depth, 0, -1):
        total += 2 * 2 * widths[level + 1] * widths[level] + widths[level]  # up-convolution
        total += conv(2 * widths[level], widths[level]) + conv(widths[level], widths[level])
    return total + widths[1] * classes + classes


@pytest.mark.parametrize("batch_norm", [False, True])
def test_parameter_count_matches_formula_for_tiny_models(batch_norm):
    model = build_unet(in_channels=3, classes=4, depth=3, filters=4, batch_norm=batch_norm)
    assert model.count_params() == expected_params(3, 4, 3, 4, batch_norm)


def test_default_config_is_the_papers_network():
    model = build_unet(**ModelConfig().to_dict())
    assert model.count_params() == expected_params(1, 1, 4, 64, False)
    assert round(model.count_params() / 1e6) == 31  # "31 M parameters" as commonly quoted
    assert model.get_layer("bottom_conv2").filters == 1024


@pytest.mark.parametrize("padding,size", [("valid", 44), ("same", 16)])
def test_keras_file_round_trip_gives_identical_outputs(tmp_path, padding, size):
    model = build_unet(classes=2, depth=2, filters=2, padding=padding, batch_norm=True)
    images = np.random.default_rng(0).random((2, size, size, 1), dtype="float32")
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(run(loaded, images), run(model, images))
    assert loaded.get_layer("up1_concat").name == "up1_concat"
    assert type(loaded.get_layer("down1_bn1")) is FusedBatchNormalization


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_normalisation_computes_what_keras_does(policy):
    """Outputs, gradients and moving statistics of a training step, and inference after,
    as keras.layers.BatchNormalization's (its float32 arithmetic, differently ordered)."""
    import tensorflow as tf

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        rng = np.random.default_rng(0)
        images = tf.constant(rng.normal(1.0, 3.0, (2, 6, 5, 4)), "float32")
        weights = tf.constant(rng.normal(size=(2, 6, 5, 4)), "float32")
        gamma, beta = rng.normal(size=4), rng.normal(size=4)
        results = []
        for layer_class in (keras.layers.BatchNormalization, FusedBatchNormalization):
            layer = layer_class(momentum=0.5)
            layer.build(images.shape)
            layer.gamma.assign(gamma)
            layer.beta.assign(beta)
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = tf.cast(layer(images, training=True), "float32")
                objective = tf.reduce_sum(outputs * weights)
            gradients = tape.gradient(objective, [images, layer.gamma, layer.beta])
            inference = layer(images, training=False)
            arrays = [outputs, *gradients, layer.moving_mean, layer.moving_variance, inference]
            results.append([keras.ops.convert_to_numpy(a).astype("float32") for a in arrays])
        assert keras.backend.standardize_dtype(inference.dtype) == layer.compute_dtype
        tolerance = 1e-5 if policy == "float32" else 2e-2  # bf16 outputs: 8 bits of mantissa
        for keras_result, fused_result in zip(*results, strict=True):
            np.testing.assert_allclose(fused_result, keras_result, rtol=tolerance, atol=tolerance)
        assert not np.allclose(results[1][4], 0.0)  # the moving mean moved
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"padding": "full"}, "padding"),
        ({"depth": 0}, "depth"),
        ({"classes": 0}, "classes"),
        ({"filters": 1.5}, "filters"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_unet(**kwargs)


def test_batch_normalisation_statistics_settle_within_a_short_run():
    """After 30 steps the moving statistics are the batches' (Keras's momentum of 0.99 would
    keep 74 % of the initial zeros and ones; a 100-step run predicted all-cell on ISBI)."""
    keras.utils.set_random_seed(0)
    model = build_unet(depth=2, filters=4, padding="same", batch_norm=True)
    model.compile(keras.optimizers.SGD(learning_rate=0.0), loss="mse")  # weights stay
    images = np.random.default_rng(0).normal(2.0, 1.0, (2, 16, 16, 1)).astype("float32")
    for _ in range(30):
        model.train_on_batch(images, np.zeros((2, 16, 16, 1), "float32"))
    convolution = keras.Model(model.inputs, model.get_layer("down1_conv1").output)
    outputs = run(convolution, images)
    layer = model.get_layer("down1_bn1")
    np.testing.assert_allclose(layer.moving_mean.numpy(), outputs.mean((0, 1, 2)), rtol=0.05)
    np.testing.assert_allclose(layer.moving_variance.numpy(), outputs.var((0, 1, 2)), rtol=0.05)

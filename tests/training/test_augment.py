"""In-graph elastic deformation against elasticdeform, the reference implementation."""

import elasticdeform
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from unet_keras.training import augment


def _smooth_image(shape, seed=0):
    """A [0, 1] image with structure at several scales, like a micrograph."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return (image - image.min()) / (image.max() - image.min())


def _deform(image, grid, interpolation):
    return augment.elastic_deform(
        tf.constant(image[..., None], tf.float32), tf.constant(grid, tf.float32), interpolation
    )[..., 0].numpy()


def test_elasticdeform_is_importable_under_numpy_2():
    # The PyPI wheel of elasticdeform 0.5.1 is built against NumPy 1 and fails to import
    # here; the install must build it from source.
    assert int(np.__version__.split(".")[0]) >= 2
    moved = elasticdeform.deform_grid(np.eye(5), np.zeros((2, 3, 3)), order=1)
    np.testing.assert_allclose(moved, np.eye(5))


@pytest.mark.parametrize(("interpolation", "order"), [("linear", 1), ("cubic", 3)])
def test_image_matches_elasticdeform(interpolation, order):
    image = _smooth_image((67, 90))
    grid = np.random.default_rng(1).normal(0, 10, (2, 3, 3))
    expected = elasticdeform.deform_grid(image, grid, order=order, mode="mirror")
    ours = _deform(image, grid, interpolation)
    assert np.abs(ours - expected).mean() <= 1e-3
    assert np.abs(ours - expected).max() < 1e-4  # in fact equal to float32 precision


def test_mask_matches_elasticdeform_with_nearest():
    rng = np.random.default_rng(2)
    mask = (ndimage.gaussian_filter(rng.random((80, 64)), 3) > 0.5).astype(np.float64) * 255
    grid = rng.normal(0, 10, (2, 4, 3))
    expected = elasticdeform.deform_grid(mask, grid, order=0, mode="mirror")
    ours = _deform(mask, grid, "nearest")
    assert set(np.unique(ours)) <= {0.0, 255.0}  # no class invented
    assert (ours == expected).mean() >= 0.999


def test_zero_displacement_is_identity_for_every_interpolation():
    image = _smooth_image((20, 31))
    for interpolation in ("nearest", "linear", "cubic"):
        moved = _deform(image, np.zeros((2, 3, 3)), interpolation)
        np.testing.assert_allclose(moved, image, atol=1e-5, err_msg=interpolation)


def test_grid_interpolation_passes_through_the_control_points():
    # With 3 points over 9 pixels the control points sit on pixels 0, 4 and 8.
    matrix = augment.grid_interpolation_matrix(3, 9)
    np.testing.assert_allclose(matrix[[0, 4, 8]], np.eye(3), atol=1e-6)
    # A constant grid moves every pixel by the same amount.
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)


def test_translation_by_whole_pixels_shifts_the_image():
    image = _smooth_image((16, 16))
    grid = np.zeros((2, 3, 3))
    grid[1] = 2.0  # sample two columns to the right
    moved = _deform(image, grid, "linear")
    np.testing.assert_allclose(moved[:, :-2], image[:, 2:], atol=1e-6)
    # Beyond the border the image is mirrored about its last column.
    np.testing.assert_allclose(moved[:, -2:], image[:, [-2, -3]], atol=1e-6)


def test_deformation_runs_in_a_graph_without_python_ops():
    @tf.function(input_signature=[tf.TensorSpec((32, 32, 2), tf.float32)])
    def deform(image):
        grid = augment.random_displacement_grid(tf.constant([1, 2]), (3, 3), 10.0)
        return augment.elastic_deform(image, grid, "cubic")

    graph = deform.get_concrete_function().graph.as_graph_def()
    op_types = {node.op for node in graph.node}
    op_types |= {node.op for function in graph.library.function for node in function.node_def}
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    assert deform(tf.zeros((32, 32, 2))).shape == (32, 32, 2)


def test_random_grid_is_seeded():
    first = augment.random_displacement_grid(tf.constant([3, 4]), (3, 5), 10.0)
    again = augment.random_displacement_grid(tf.constant([3, 4]), (3, 5), 10.0)
    other = augment.random_displacement_grid(tf.constant([3, 5]), (3, 5), 10.0)
    assert first.shape == (2, 3, 5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)

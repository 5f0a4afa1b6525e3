"""unet_keras.geometry: sizes, mirrored indices, network tiles and windows.

The plans are held to the layers they describe: sizes to stepping through the network,
the receptive reach to what a real U-Net's output responds to, the export graph's plan to
the NumPy one, and windows (the client's, volume blocks') to whole-image prediction.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_keras.exports.graph_tiles import GraphAxis
from unet_keras.geometry import (
    DEFAULT_OUTPUT_TILE,
    check_input_size,
    context_margin,
    input_size_for_output,
    largest_output_tile,
    mirror_index,
    output_size,
    plan_blocks,
    plan_tiles,
    receptive_reach,
    tiles_within,
    valid_input_size,
)
from unet_keras.windows import plan_image_windows, plan_windows, stitch


def simulate_valid(n: int, depth: int) -> int | None:
    """Steps a side length through the valid-padding network; None where it breaks."""
    for _ in range(depth):
        n -= 4
        if n <= 0 or n % 2:
            return None
        n //= 2
    n -= 4
    if n <= 0:
        return None
    for _ in range(depth):
        n = 2 * n - 4
    return n if n > 0 else None


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_size_helpers_agree_with_stepping_through_the_layers(depth):
    sizes = range(1, 400)
    workable = [n for n in sizes if simulate_valid(n, depth)]
    assert workable
    for n in sizes:
        expected = next(m for m in range(n, 10_000) if simulate_valid(m, depth))
        assert valid_input_size(n, depth) == expected
    for n in workable:
        out = simulate_valid(n, depth)
        assert output_size(n, depth) == out
        assert (n - out) // 2 == context_margin(depth)
    for out in range(1, 200):
        expected = next(m for m in range(1, 10_000) if (simulate_valid(m, depth) or 0) >= out)
        assert input_size_for_output(out, depth) == expected


def test_paper_sizes():
    assert output_size(572) == 388
    assert context_margin() == 92
    assert receptive_reach() == 107
    assert valid_input_size(570) == 572
    assert input_size_for_output(388) == 572
    assert output_size(512, depth=4, padding="same") == 512


def test_check_input_size_names_side_and_nearest_sizes():
    check_input_size((572, 556))
    with pytest.raises(ValueError, match=r"width 500 .*nearest workable: 492 or 508"):
        check_input_size((572, 500))
    with pytest.raises(ValueError, match=r"height 100 .*nearest workable: 96 or 112"):
        check_input_size((100, 96), depth=4, padding="same")
    with pytest.raises(ValueError, match=r"size 10 .*nearest workable: 16\b"):
        check_input_size(10, depth=4, padding="same")
    with pytest.raises(ValueError, match="nearest workable: 188"):
        output_size(100)
    with pytest.raises(ValueError, match="padding"):
        check_input_size(64, padding="full")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_mirror_index_is_numpys_reflect_in_numpy_and_in_a_graph(size):
    index = np.arange(-3 * size - 5, 4 * size + 5)
    expected = np.pad(np.arange(size), 4 * size + 5, mode="reflect")[index + 4 * size + 5]
    np.testing.assert_array_equal(mirror_index(index, size), expected)
    graph = tf.function(lambda i, n: mirror_index(i, n, tf))
    np.testing.assert_array_equal(graph(tf.constant(index, tf.int32), tf.constant(size)), expected)


@pytest.mark.parametrize("size", [1, 2, 7, 100, 388, 389, 512, 1000, 4096])
def test_valid_tiles_cover_each_pixel_once(size: int) -> None:
    axis = plan_tiles(size, 4, "valid")
    covered = np.zeros(size, int)
    for start, (low, high) in zip(axis.starts, axis.spans, strict=True):
        assert start <= low < high <= start + axis.tile_out and start % 16 == 0
        covered[low:high] += 1
    assert np.all(covered == 1)
    assert axis.tile_in - axis.tile_out == 2 * context_margin(4) == 184
    assert axis.tile_out <= DEFAULT_OUTPUT_TILE


def test_valid_plan_shrinks_tiles_to_fit_the_image() -> None:
    # Two tiles of 308 cover 600 pixels; two of 516 would compute 2.2x as much.
    axis = plan_tiles(600, 4, "valid")
    assert (len(axis.starts), axis.tile_out, axis.tile_in) == (2, 308, 492)
    # ISBI's 512 x 512 sections take one tile; 4096 takes 8, 512 pixels apart.
    assert plan_tiles(512, 4, "valid").starts == (0,)
    assert plan_tiles(4096, 4, "valid").starts == tuple(range(0, 4096, 512))


def test_tiles_too_small_for_the_grid_are_refused() -> None:
    assert largest_output_tile(4, 204) == 20
    with pytest.raises(ValueError, match=r"tile 188 predicts 4 px.*at least 204"):
        plan_tiles(100, 4, "valid", 188)
    with pytest.raises(ValueError, match="nearest workable"):
        plan_tiles(100, 4, "valid", 190)


def test_same_plan_overlaps_and_covers() -> None:
    axis = plan_tiles(1000, 4, "same", 256, 64)
    assert axis.starts[0] == -32 and axis.starts[-1] + 256 == 1000 + 32
    steps = np.diff(axis.starts)
    assert np.all(steps <= 256 - 64) and np.all(steps > 0)
    weight_sum = np.zeros(1000)
    for (low, high), weights in zip(axis.spans, axis.weights, strict=True):
        weight_sum[low:high] += weights
    np.testing.assert_allclose(weight_sum, 1.0, rtol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_the_export_graph_the_numpy_plan_and_windows_agree_on_every_size(depth):
    """Sizes 1 to 400, three tile sizes: the same tiles, inputs and owned spans; windows
    whose kept pixels see all they need on the grid a whole-image pass uses."""
    grid, reach = 2**depth, receptive_reach(depth)

    @tf.function(reduce_retracing=True)
    def graph_plan(size, largest):
        axis = GraphAxis.valid(size, depth, largest)
        spans = tf.map_fn(lambda tile: tf.stack(axis.span(tile)), tf.range(axis.count))
        return axis.count, axis.tile_in, axis.input_index(), spans

    tiles = [None, input_size_for_output(grid, depth), input_size_for_output(130, depth)]
    for tile in tiles:
        largest = largest_output_tile(depth, tile)
        for size in range(1, 401):
            plan = plan_tiles(size, depth, "valid", tile)
            count, tile_in, inputs, spans = graph_plan(tf.constant(size), largest)
            assert (int(count), int(tile_in)) == (len(plan.starts), plan.tile_in)
            expected_inputs = [
                mirror_index(np.arange(plan.tile_in) + start - plan.margin, size)
                for start in plan.starts
            ]
            np.testing.assert_array_equal(inputs, expected_inputs)
            # Each tile writes the pixels the NumPy plan gives it, from its start on.
            np.testing.assert_array_equal(spans, plan.spans)
            starts = [low for low, _ in plan.spans]
            assert starts == list(plan.starts)
            extent = max(2 * reach + grid, plan.tile_in)
            for span in plan_windows(size, extent, reach, grid):
                assert span.start % grid == 0
                assert span.keep_start - span.start >= reach or span.start == 0
                assert span.stop - span.keep_stop >= reach or span.stop == size


@pytest.mark.parametrize(("depth", "tile", "overlap"), [(4, 256, 64), (2, 32, 8), (3, 64, 56)])
def test_the_export_graph_blends_same_padding_tiles_as_the_numpy_plan(depth, tile, overlap):
    """Sizes 1 to 400: the same tiles, inputs, spans and weights, bit for bit (float sums
    in the same order); overlaps large enough that three tiles meet at a pixel."""

    @tf.function(reduce_retracing=True)
    def graph_plan(size):
        axis = GraphAxis.same(size, depth, tile, overlap)
        spans = tf.map_fn(lambda i: tf.stack(axis.span(i)), tf.range(axis.count))
        weights = tf.map_fn(
            lambda i: tf.pad(axis.weights(i), [[0, size - tf.size(axis.weights(i))]]),
            tf.range(axis.count),
            fn_output_signature=tf.float32,
        )
        return axis.tile_in, axis.starts, axis.input_index(), spans, weights

    for size in range(1, 401):
        plan = plan_tiles(size, depth, "same", tile, overlap)
        tile_in, starts, inputs, spans, weights = graph_plan(tf.constant(size))
        assert int(tile_in) == plan.tile_in and list(starts.numpy()) == list(plan.starts)
        expected_inputs = [mirror_index(np.arange(plan.tile_in) + s, size) for s in plan.starts]
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(spans, plan.spans)
        for row, expected in zip(weights.numpy(), plan.weights, strict=True):
            np.testing.assert_array_equal(row[: expected.size], expected)


def tiny_valid_unet(depth: int) -> keras.Model:
    """A seeded valid-padding U-Net with 4 filters (2 leave some paths dead), no dropout."""
    from unet_keras.model import build_unet

    keras.utils.set_random_seed(11)
    return build_unet(depth=depth, filters=4, dropout=0.0)


def whole_row_prediction(model: keras.Model, depth: int, row: np.ndarray) -> np.ndarray:
    """The model's output for a 1 x W image given as one row, mirrored as predict does."""
    margin = context_margin(depth)
    width = row.shape[0]
    padded_width = input_size_for_output(width, depth)
    tall = input_size_for_output(1, depth)
    columns = mirror_index(np.arange(padded_width) - margin, width)
    image = np.broadcast_to(row[columns], (tall, padded_width))[None, ..., None]
    return np.asarray(model(image.astype(np.float32)))[0, 0, :width, 0]


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_reach_is_how_far_a_real_unets_output_responds(depth):
    model = tiny_valid_unet(depth)
    width = 6 * receptive_reach(depth)
    row = np.random.default_rng(0).normal(size=width).astype(np.float32)
    base = whole_row_prediction(model, depth, row)
    farthest = 0
    centre = width // 2
    # One input pixel at each place of the pooling grid: the reach depends on the place.
    for pixel in range(centre, centre + 2**depth):
        changed = row.copy()
        changed[pixel] += 5.0
        moved = np.flatnonzero(np.abs(whole_row_prediction(model, depth, changed) - base) > 0)
        farthest = max(farthest, int(np.abs(moved - pixel).max()))
    assert farthest == receptive_reach(depth)
    assert receptive_reach(depth) == context_margin(depth) + 2**depth - 1


def test_windows_with_the_reach_reproduce_the_whole_image_and_less_does_not():
    """What the client and volume blocks rely on, with a real network and Segmenter."""
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig

    depth = 2
    model = tiny_valid_unet(depth)
    config = ModelConfig(depth=depth, filters=4, dropout=0.0)
    normalization = NormalizationConfig("standardize", (128.0,), (64.0,), "uint8")
    record = ModelRecord(MaskConfig((0, 255)), normalization, config, (92, 52))
    segmenter = Segmenter.from_model(model, record, tile=76)
    image = np.random.default_rng(4).integers(0, 256, (131, 173, 1), dtype=np.uint8)
    whole = segmenter.probabilities(image)

    def by_windows(context: int, grid: int) -> np.ndarray:
        # 79-pixel windows: kept parts end inside pooling cells, where the margin falls
        # short (at cell boundaries it would be enough).
        windows = plan_image_windows(131, 173, 79 * 79, context, grid)
        assert len(windows) >= 6
        results = [segmenter.probabilities(image[window.region]) for window in windows]
        return stitch(windows, results, 131, 173)

    np.testing.assert_allclose(by_windows(receptive_reach(depth), 4), whole, atol=1e-5)
    # The margin alone is not enough context, nor is a window off the pooling grid.
    assert np.abs(by_windows(context_margin(depth), 4) - whole).max() > 1e-3
    assert np.abs(by_windows(receptive_reach(depth), 3) - whole).max() > 1e-3


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 2000),
    width=st.integers(1, 2000),
    max_pixels=st.integers(1, 400_000),
    context=st.integers(0, 120),
    grid=st.sampled_from([1, 4, 16]),
)
def test_image_windows_cover_the_image_with_context_on_the_grid(
    height: int, width: int, max_pixels: int, context: int, grid: int
) -> None:
    try:
        windows = plan_image_windows(height, width, max_pixels, context, grid)
    except ValueError as error:
        assert "too small" in str(error) and math.isqrt(max_pixels) < 2 * context + grid
        return
    rows = sorted({window.rows for window in windows}, key=lambda span: span.start)
    cols = sorted({window.cols for window in windows}, key=lambda span: span.start)
    assert len(windows) == len(rows) * len(cols)
    for spans, size in ((rows, height), (cols, width)):
        # The kept parts partition the axis.
        assert [s.keep_start for s in spans] == [0] + [s.keep_stop for s in spans[:-1]]
        assert spans[-1].keep_stop == size
        for span in spans:
            assert span.start % grid == 0
            assert span.start == 0 or span.keep_start - span.start >= context
            assert span.stop == size or span.stop - span.keep_stop >= context
    for window in windows:
        rows_sent = window.rows.stop - window.rows.start
        cols_sent = window.cols.stop - window.cols.start
        assert rows_sent * cols_sent <= (max_pixels if len(windows) > 1 else height * width)


def test_blocks_are_whole_chunks_and_tiles_within_cover_a_block():
    assert plan_blocks(100, 16, 40) == [(0, 48), (48, 96), (96, 100)]
    assert plan_blocks(10, 16, 1) == [(0, 10)]
    axis = plan_tiles(600, 4, "valid")
    for start, stop in plan_blocks(600, 64, 100):
        writers = tiles_within(axis, start, stop)
        covered = set()
        for i in writers:
            covered |= set(range(*axis.spans[i]))
        assert set(range(start, stop)) <= covered
        assert all(set(range(*axis.spans[i])) & set(range(start, stop)) for i in writers)

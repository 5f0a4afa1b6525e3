"""Whole images through an ONNX graph as `Segmenter` predicts them: the tile plans of
`unet_keras.geometry` written as ONNX operators.

`geometry`'s plan functions take an array module (`xp`); `OnnxMath` is one whose values
are int64 tensors of the graph being built, so the very functions predict plans with
(`same_tiling`, `same_starts`, `mirror_index`) write the graph's plan. Python's integer
division and remainder are kept (ONNX's `Div` truncates towards zero; the plans need
floor division).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from unet_keras.geometry import (
    context_margin,
    mirror_index,
    same_starts,
    same_tiling,
    valid_outputs,
)


class OnnxInt:
    """An int64 (or bool) tensor of the graph, with Python's integer arithmetic."""

    def __init__(self, graph: Any, name: str) -> None:
        self.graph, self.name = graph, name

    def _binary(self, op: str, other: Any, reverse: bool = False, **attributes) -> OnnxInt:
        other = self.graph.integer(other)
        pair = [other.name, self.name] if reverse else [self.name, other.name]
        return OnnxInt(self.graph, self.graph.node(op, pair, **attributes))

    def __add__(self, other: Any) -> OnnxInt:
        return self._binary("Add", other)

    def __radd__(self, other: Any) -> OnnxInt:
        return self._binary("Add", other, reverse=True)

    def __sub__(self, other: Any) -> OnnxInt:
        return self._binary("Sub", other)

    def __rsub__(self, other: Any) -> OnnxInt:
        return self._binary("Sub", other, reverse=True)

    def __mul__(self, other: Any) -> OnnxInt:
        return self._binary("Mul", other)

    def __rmul__(self, other: Any) -> OnnxInt:
        return self._binary("Mul", other, reverse=True)

    def __mod__(self, other: Any) -> OnnxInt:
        return self._binary("Mod", other, fmod=0)  # the divisor's sign, as Python's %

    def __floordiv__(self, other: Any) -> OnnxInt:
        # (a - a mod b) / b divides exactly, so ONNX's truncating Div gives the floor.
        return (self - self % other)._binary("Div", other)

    def __neg__(self) -> OnnxInt:
        return OnnxInt(self.graph, self.graph.node("Neg", [self.name]))

    def __le__(self, other: Any) -> OnnxInt:
        return self._binary("LessOrEqual", other)

    def __lt__(self, other: Any) -> OnnxInt:
        return self._binary("Less", other)

    def __gt__(self, other: Any) -> OnnxInt:
        return self._binary("Greater", other)

    def __ge__(self, other: Any) -> OnnxInt:
        return self._binary("GreaterOrEqual", other)


class OnnxMath:
    """The few array functions `geometry`'s plans call, on `OnnxInt` values."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def where(self, condition: OnnxInt, a: Any, b: Any) -> OnnxInt:
        """ONNX's Where."""
        a, b = self.graph.integer(a), self.graph.integer(b)
        return OnnxInt(self.graph, self.graph.node("Where", [condition.name, a.name, b.name]))

    def maximum(self, a: Any, b: Any) -> OnnxInt:
        """ONNX's Max."""
        a, b = self.graph.integer(a), self.graph.integer(b)
        return OnnxInt(self.graph, self.graph.node("Max", [a.name, b.name]))

    def abs(self, a: OnnxInt) -> OnnxInt:
        """ONNX's Abs."""
        return OnnxInt(self.graph, self.graph.node("Abs", [a.name]))

    def range(self, count: Any) -> OnnxInt:
        """0, 1, ..., count - 1."""
        start, step = self.graph.integer(0), self.graph.integer(1)
        limit = self.graph.integer(count)
        return OnnxInt(self.graph, self.graph.node("Range", [start.name, limit.name, step.name]))


def side_of(graph: Any, image: str, axis: int) -> OnnxInt:
    """The size of `image` along `axis`, a scalar."""
    shape = graph.node("Shape", [image])
    return OnnxInt(graph, graph.node("Gather", [shape, graph.integer(axis).name]))


def mirrored_valid(graph: Any, image: str, depth: int) -> tuple[str, OnnxInt, OnnxInt]:
    """An NHWC image mirrored by the context margin (np.pad's reflect, predict's
    `mirror_index`), and past it at the bottom and right up to a workable size, so that a
    valid-padding network's output covers the image; with the image's height and width."""
    margin, (smallest, step) = context_margin(depth), valid_outputs(depth)
    height, width = side_of(graph, image, 1), side_of(graph, image, 2)
    after = []
    for size in (height, width):
        # The smallest output side of at least `size`, less the size, plus the margin.
        output = smallest + (OnnxMath(graph).maximum(size - smallest, 0) + step - 1) // step * step
        after.append(graph.scalars(output - size + margin))
    before = graph.integer([0, margin, margin, 0, 0]).name
    pads = graph.node("Concat", [before, *after, graph.integer([0]).name], axis=0)
    return graph.node("Pad", [image, pads], mode="reflect"), height, width


class SameAxis(NamedTuple):
    """One axis's same-padding plan as graph values: the mirrored image pixel each tile
    pixel reads [count, side]; for each image pixel, the tile pixels that see it [size, K]
    (flat, tile * side + offset; K the most tiles that see any pixel) and their float32
    weights (each one's Gaussian over their sum there; 0 where fewer than K tiles see it)."""

    read: str
    seen_by: str
    weights: str


def blended_same(
    graph: Any,
    image: str,
    depth: int,
    tile: int,
    overlap: int,
    classes: int,
    network: Callable[[str], str],
) -> str:
    """Probabilities [N, H, W, classes] of an NHWC image through a same-padding network,
    tiled and blended as `Segmenter` does (`geometry._plan_same`): every tile in one batch,
    each image pixel the Gaussian-weighted mean of the tile pixels that see it.

    Each image pixel gathers those values, the rows first, then the columns. Adding the
    tiles into the image with ScatterND would take fewer operators, but ONNX Runtime adds
    a ScatterND's repeated indices from several threads without locks, and loses some
    when the threads interleave (microsoft/onnxruntime#18048; measured in docs/interop.md).
    """
    rows, cols = (
        _same_axis(graph, side_of(graph, image, axis), depth, tile, overlap) for axis in (1, 2)
    )
    windows = graph.node("Gather", [image, rows.read], axis=1)  # [N, r, h, W, C]
    windows = graph.node("Gather", [windows, cols.read], axis=3)  # [N, r, h, c, w, C]
    windows = graph.node("Transpose", [windows], perm=[0, 1, 3, 2, 4, 5])
    shape = graph.node("Shape", [windows])
    flat = graph.node("Concat", [graph.integer([-1]).name, _part(graph, shape, 3, 6)], axis=0)
    outputs = network(graph.node("Reshape", [windows, flat]))  # [N r c, h, w, classes]
    grid = graph.node("Concat", [_part(graph, shape, 0, 5), graph.integer([classes]).name], axis=0)
    outputs = graph.node("Reshape", [outputs, grid])  # [N, r, c, h, w, classes]
    outputs = graph.node("Transpose", [outputs], perm=[0, 1, 3, 2, 4, 5])  # [N, r, h, c, w, k]
    columns = graph.node("Mul", [_part(graph, shape, 2, 3), _part(graph, shape, 4, 5)])
    side_by_side = graph.node(
        "Concat", [graph.integer([0, -1]).name, columns, graph.integer([classes]).name], axis=0
    )
    outputs = graph.node("Reshape", [outputs, side_by_side])  # [N, r h, c w, classes]
    # Rows: [N, H, K, c w, classes] weighted and summed over K; then the columns likewise.
    gathered = graph.node("Gather", [outputs, rows.seen_by], axis=1)
    weights = graph.node("Unsqueeze", [rows.weights, graph.axes(2, 3)])
    summed = _sum(graph, graph.node("Mul", [gathered, weights]), 2)  # [N, H, c w, classes]
    gathered = graph.node("Gather", [summed, cols.seen_by], axis=2)  # [N, H, W, K, classes]
    weights = graph.node("Unsqueeze", [cols.weights, graph.axes(2)])
    return _sum(graph, graph.node("Mul", [gathered, weights]), 3)


def _same_axis(graph: Any, size: OnnxInt, depth: int, tile: int, overlap: int) -> SameAxis:
    """One axis's plan (`SameAxis`) for `size` pixels, from `geometry`'s plan functions."""
    xp = OnnxMath(graph)
    count, side, first, last = same_tiling(size, depth, tile, overlap, xp)
    starts = same_starts(count, first, last, xp)
    offsets = _unsqueezed(graph, xp.range(side), 0)
    read = mirror_index(_unsqueezed(graph, starts, 1) + offsets, size, xp)
    # The tiles are equally long and in order, so the ones that see pixel y are
    # ended <= i < begun: ended of them stop at or before y, begun start at or before it.
    pixel, starts_row = _unsqueezed(graph, xp.range(size), 1), _unsqueezed(graph, starts, 0)
    ended = _count(graph, starts_row + side <= pixel)  # [size, 1]
    begun = _count(graph, starts_row <= pixel)
    most = OnnxInt(graph, graph.node("ReduceMax", [(begun - ended).name], keepdims=0))
    seen = ended + _unsqueezed(graph, xp.range(most), 0)  # [size, K]
    inside = seen < begun
    seen = xp.where(inside, seen, 0)
    start_of_seen = OnnxInt(graph, graph.node("Gather", [starts.name, seen.name]))
    offset = xp.where(inside, pixel - start_of_seen, 0)
    # same_blend_kernel(side)[offset] in float64: exp(-0.5 ((o - (side - 1) / 2) / (side / 8))**2).
    double = graph.onnx.TensorProto.DOUBLE
    centred = graph.node(
        "Sub",
        [
            graph.node("Cast", [offset.name], to=double),
            graph.node("Div", [graph.node("Cast", [(side - 1).name], to=double), graph.real(2.0)]),
        ],
    )
    scaled = graph.node(
        "Div",
        [
            centred,
            graph.node("Div", [graph.node("Cast", [side.name], to=double), graph.real(8.0)]),
        ],
    )
    kernel = graph.node(
        "Exp", [graph.node("Mul", [graph.node("Mul", [scaled, scaled]), graph.real(-0.5)])]
    )
    kernel = graph.node("Where", [inside.name, kernel, graph.real(0.0)])
    coverage = graph.node("ReduceSum", [kernel, graph.axes(1)], keepdims=1)
    weights = graph.node("Div", [kernel, coverage])
    weights = graph.node("Cast", [weights], to=graph.onnx.TensorProto.FLOAT)
    return SameAxis(read.name, (seen * side + offset).name, weights)


def _unsqueezed(graph: Any, value: OnnxInt, axis: int) -> OnnxInt:
    """`value` with a new axis of length 1 at `axis`."""
    return OnnxInt(graph, graph.node("Unsqueeze", [value.name, graph.axes(axis)]))


def _count(graph: Any, condition: OnnxInt) -> OnnxInt:
    """How many of each row of a [rows, n] condition hold, as [rows, 1]."""
    ones = graph.node("Cast", [condition.name], to=graph.onnx.TensorProto.INT64)
    return OnnxInt(graph, graph.node("ReduceSum", [ones, graph.axes(1)], keepdims=1))


def _sum(graph: Any, value: str, axis: int) -> str:
    """`value` summed over `axis`, which goes."""
    return graph.node("ReduceSum", [value, graph.axes(axis)], keepdims=0)


def _part(graph: Any, shape: str, start: int, stop: int) -> str:
    """shape[start:stop]."""
    return graph.node("Slice", [shape, graph.integer([start]).name, graph.integer([stop]).name])

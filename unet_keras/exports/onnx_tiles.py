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
from typing import Any

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
    each weighted by its Gaussian over the sum of the Gaussians at each pixel."""
    (height, row_index, row_placed, row_w), (width, col_index, col_placed, col_w) = (
        _same_axis(graph, side_of(graph, image, axis), depth, tile, overlap) for axis in (1, 2)
    )
    windows = graph.node("Gather", [image, row_index.name], axis=1)  # [N, r, h, W, C]
    windows = graph.node("Gather", [windows, col_index.name], axis=3)  # [N, r, h, c, w, C]
    windows = graph.node("Transpose", [windows], perm=[0, 1, 3, 2, 4, 5])
    shape = graph.node("Shape", [windows])
    flat = graph.node("Concat", [graph.integer([-1]).name, _part(graph, shape, 3, 6)], axis=0)
    outputs = network(graph.node("Reshape", [windows, flat]))  # [N r c, h, w, classes]
    grid = graph.node("Concat", [_part(graph, shape, 0, 5), graph.integer([classes]).name], axis=0)
    outputs = graph.node("Reshape", [outputs, grid])  # [N, r, c, h, w, classes]
    # As predict: the row and column weights' product first, then times the output.
    weight = graph.node(
        "Mul",
        [
            graph.node("Unsqueeze", [row_w, graph.axes(1, 3)]),  # [r, 1, h, 1]
            graph.node("Unsqueeze", [col_w, graph.axes(0, 2)]),  # [1, c, 1, w]
        ],
    )
    weighted = graph.node("Mul", [outputs, graph.node("Unsqueeze", [weight, graph.axes(0, 5)])])
    indices = _scatter_indices(graph, shape, row_placed, col_placed)
    # One more row and column, where the pixels beyond the image are added, then cut off.
    batch = _part(graph, graph.node("Shape", [image]), 0, 1)
    beyond = graph.scalars(height + 1, width + 1)
    total = graph.node("Concat", [batch, beyond, graph.integer([classes]).name], axis=0)
    zero = graph.onnx.helper.make_tensor("zero", graph.onnx.TensorProto.FLOAT, [1], [0.0])
    zeros = graph.node("ConstantOfShape", [total], value=zero)
    summed = graph.node("ScatterND", [zeros, indices, weighted], reduction="add")
    starts, axes = graph.integer([0, 0]).name, graph.integer([1, 2]).name
    return graph.node("Slice", [summed, starts, graph.scalars(height, width), axes])


def _same_axis(
    graph: Any, size: OnnxInt, depth: int, tile: int, overlap: int
) -> tuple[OnnxInt, OnnxInt, OnnxInt, str]:
    """One axis's plan: its size; for each tile's pixels [count, side], the mirrored image
    pixel each reads, the pixel it is added to (`size`, one past the image, where it falls
    outside), and its float32 weight (its Gaussian over their sum there)."""
    xp = OnnxMath(graph)
    count, side, first, last = same_tiling(size, depth, tile, overlap, xp)
    starts = same_starts(count, first, last, xp)
    offsets = OnnxInt(graph, graph.node("Unsqueeze", [xp.range(side).name, graph.axes(0)]))
    targets = OnnxInt(graph, graph.node("Unsqueeze", [starts.name, graph.axes(1)])) + offsets
    inside = OnnxInt(graph, graph.node("And", [(targets >= 0).name, (targets < size).name]))
    placed = xp.where(inside, targets, size)
    # same_blend_kernel(side) in float64: exp(-0.5 ((i - (side - 1) / 2) / (side / 8))**2).
    double = graph.onnx.TensorProto.DOUBLE
    centred = graph.node(
        "Sub",
        [
            graph.node("Cast", [xp.range(side).name], to=double),
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
    spread = graph.scalars(count, side)
    updates = graph.node("Expand", [graph.node("Unsqueeze", [kernel, graph.axes(0)]), spread])
    zero = graph.onnx.helper.make_tensor("zero", double, [1], [0.0])
    slots = graph.node("ConstantOfShape", [graph.scalars(size + 1)], value=zero)
    coverage = graph.node(
        "ScatterND",
        [slots, graph.node("Unsqueeze", [placed.name, graph.axes(2)]), updates],
        reduction="add",
    )
    weights = graph.node("Div", [updates, graph.node("Gather", [coverage, placed.name])])
    weights = graph.node("Cast", [weights], to=graph.onnx.TensorProto.FLOAT)
    return size, mirror_index(targets, size, xp), placed, weights


def _part(graph: Any, shape: str, start: int, stop: int) -> str:
    """shape[start:stop]."""
    return graph.node("Slice", [shape, graph.integer([start]).name, graph.integer([stop]).name])


def _scatter_indices(graph: Any, shape: str, rows: OnnxInt, cols: OnnxInt) -> str:
    """[N, r, c, h, w, 3]: the (image, row, column) each tile pixel is added to, for tiles
    [N, r, c, h, w] whose pixels fall on `rows` [r, h] and `cols` [c, w]."""
    grid = _part(graph, shape, 0, 5)
    batch = graph.node(
        "Range",
        [
            graph.integer(0).name,
            graph.node("Gather", [shape, graph.integer(0).name]),
            graph.integer(1).name,
        ],
    )
    parts = [
        graph.node("Unsqueeze", [batch, graph.axes(1, 2, 3, 4)]),
        graph.node("Unsqueeze", [rows.name, graph.axes(0, 2, 4)]),
        graph.node("Unsqueeze", [cols.name, graph.axes(0, 1, 3)]),
    ]
    parts = [
        graph.node("Unsqueeze", [graph.node("Expand", [part, grid]), graph.axes(5)])
        for part in parts
    ]
    return graph.node("Concat", parts, axis=5)

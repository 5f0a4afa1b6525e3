"""The network as an ONNX model: for ONNX Runtime, deepImageJ, ilastik and other tools
without a TensorFlow runtime.

The graph is written from the Keras model layer by layer (`_LAYERS`), one ONNX operator
or a few for each, so no TensorFlow is needed to write it and none to run it. It takes a
batch of raw tiles [N, h, w, C] in the dtype the model was trained on, normalises them
inside the graph as `unet_keras.io.normalization` does, and returns `probabilities`
[N, h', w', classes] (h' = h for same padding; `geometry.output_size` for valid). The
model's record and its tiling contract (which tile sizes work, the halo an output pixel
needs) travel in the file's `metadata_props`, so `predict --model MODEL.onnx` tiles images
exactly as it tiles them for the Keras model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from unet_keras import contract
from unet_keras.exports.onnx_tiles import OnnxInt, blended_same, mirrored_valid
from unet_keras.geometry import DEFAULT_SAME_TILE, context_margin, plan_tiles, same_overlap
from unet_keras.io.atomic import atomic_path
from unet_keras.record import ModelRecord

# Operators from ONNX opset 17 (2022) only: ONNX Runtime 1.12 and later, deepImageJ's and
# ilastik's ONNX runtimes run it.
ONNX_OPSET = 17
# ONNX's element types for the raw dtypes a model can be trained on.
_ELEMENT_TYPES = {
    "uint8": "UINT8",
    "uint16": "UINT16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "float16": "FLOAT16",
    "float32": "FLOAT",
    "float64": "DOUBLE",
}


def export_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
) -> Path:
    """Writes the model (a `.keras` file, run directory or shipped model's name) as an ONNX
    file at `output` (`*.onnx`), atomically; returns its path. `tile`, `overlap` and
    `threshold` are recommended in its tiling contract (default: predict's)."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"--output {output}: an ONNX model's file name ends in .onnx")
    if output.is_dir():
        raise ValueError(f"--output {output}: a folder; name the .onnx file to write")
    import onnx

    _choose_keras_backend()
    from unet_keras.saving import load_model

    network, record = load_model(model)
    proto = onnx_model(network, record, name=f"unet_{Path(str(model)).stem}")
    onnx.helper.set_model_props(proto, metadata(record, tile, overlap, threshold))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as partial:
        onnx.save(proto, partial)
    return output


def onnx_model(
    network: Any,
    record: ModelRecord,
    *,
    whole_image: bool = False,
    names: tuple[str, str] = (contract.IMAGE, contract.PROBABILITIES),
    name: str = "unet",
    tile: int | None = None,
    overlap: int | None = None,
) -> Any:
    """The checked ONNX model of a Keras U-Net with its record's normalisation; `names` are
    its input's and output's.

    With `whole_image`, images of any size in, probabilities of their size out, as
    predict gives them (`onnx_tiles`): a valid-padding network's input mirrored by the
    context margin, a same-padding network's tiles of `tile` pixels, overlapping by
    `overlap`, cut and blended as predict does.
    """
    import onnx

    tiling = (tile or DEFAULT_SAME_TILE, same_overlap(tile, overlap))
    graph = _Graph(record, names, whole_image, tiling)
    graph.convert(network)
    proto = onnx.helper.make_model(
        graph.make(name),
        opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
        producer_name="unet-keras",
        doc_string=f"U-Net ({record.model.padding} padding) made by unet-keras",
    )
    proto.ir_version = 8  # what opset 17 needs, and what older runtimes still read
    onnx.checker.check_model(proto, full_check=True)
    return proto


def metadata(
    record: ModelRecord,
    tile: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
) -> dict[str, str]:
    """The `metadata_props` of an export: the record, and the tiling contract in words a
    tool without unet-keras can follow."""
    config = record.model
    # The tile an image far larger than it is cut into: the recommended one.
    plan = plan_tiles(2**16, config.depth, config.padding, tile, same_overlap(tile, overlap))
    tiling = {
        "layout": "NHWC",
        "input": contract.IMAGE,
        "input_dtype": record.normalization.input_dtype,
        "output": contract.PROBABILITIES,
        "padding": config.padding,
        "depth": config.depth,
        "normalization": "in the graph: (x - offset) / scale per channel, in float32",
        "tile": int(plan.tile_in),
        "threshold": record.threshold_value if threshold is None else threshold,
        "mask_values": list(record.mask.class_values),
        # K > 0: the input's channels are sections -K..K of the stack, each with its own
        # channels, mirrored at the stack's ends (`unet_keras.io.context`).
        "context_sections": record.context_sections,
    }
    if config.padding == "valid":
        # Every output pixel needs this much context on each side, mirrored at the image's
        # border (Ronneberger et al. 2015, Fig. 2).
        tiling["halo"] = context_margin(config.depth)
        tiling["input_sizes"] = f"n with (n - {2 * context_margin(config.depth)}) a valid output"
    else:
        tiling["halo"] = 0
        tiling["input_sizes"] = f"multiples of {2**config.depth}"
        tiling["overlap"] = same_overlap(tile, overlap)
        tiling["blend"] = "Gaussian weights fading towards each tile's edges"
    return {
        contract.ONNX_RECORD: json.dumps(record.to_dict(), sort_keys=True),
        contract.ONNX_TILING: json.dumps(tiling, sort_keys=True),
    }


def _choose_keras_backend() -> None:
    """Reading a model file needs a Keras backend, not TensorFlow: without TensorFlow
    installed, Keras on JAX reads the weights (a user's KERAS_BACKEND wins)."""
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    if importlib.util.find_spec("tensorflow") is None:
        if importlib.util.find_spec("jax") is None:
            raise ImportError(
                "export --format onnx reads the model with Keras, which needs TensorFlow or "
                "JAX: pip install 'unet-keras[full]' or 'unet-keras[onnx,jax]'"
            )
        os.environ["KERAS_BACKEND"] = "jax"


class _Graph:
    """ONNX nodes and weights written while walking a Keras U-Net's layers in order."""

    def __init__(
        self,
        record: ModelRecord,
        names: tuple[str, str],
        whole_image: bool,
        tiling: tuple[int, int],
    ) -> None:
        import onnx

        self.helper, self.onnx = onnx.helper, onnx
        self.record, self.io_names = record, names
        self.whole_image, self.tiling = whole_image, tiling
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self.names: dict[int, str] = {}  # id(KerasTensor) -> its value's name, NCHW
        self.prefix = ""  # of the weights' names: an ensemble's members share layer names
        self.count = 0

    def convert(self, model: Any) -> None:
        """Adds `model` (a functional U-Net), and with `whole_image` its tiling, to the graph."""
        image = self._normalized_input()
        config = self.record.model
        if not self.whole_image:
            output = self._network(model, image)
        elif config.padding == "valid":
            mirrored, height, width = mirrored_valid(self, image, config.depth)
            stops = self.node("Concat", [self.scalars(height), self.scalars(width)], axis=0)
            starts, axes = self.integer([0, 0]).name, self.integer([1, 2]).name
            output = self.node("Slice", [self._network(model, mirrored), starts, stops, axes])
        else:
            tile, overlap = self.tiling
            output = blended_same(
                self, image, config.depth, tile, overlap, config.classes,
                lambda tiles: self._network(model, tiles),
            )  # fmt: skip
        self.node("Identity", [output], output=self.io_names[1])

    def _network(self, model: Any, image: str) -> str:
        """`model` (a U-Net, or an ensemble of them) on an NHWC value."""
        if self.record.members == 1:
            return self._unet(model, image)
        from unet_keras.ensemble import ensemble_members

        outputs = []
        for renormalization, member in ensemble_members(model):
            x = image
            if renormalization is not None:
                name = renormalization.name
                scale = np.asarray(renormalization.scale, np.float32)
                offset = np.asarray(renormalization.offset, np.float32)
                x = self.node("Mul", [x, self.constant(f"{name}_scale", scale)])
                x = self.node("Add", [x, self.constant(f"{name}_offset", offset)])
            self.prefix = f"{member.name}_"
            outputs.append(self._unet(member, x))
        self.prefix = ""
        return self.node("Mean", outputs)

    def _unet(self, model: Any, image: str) -> str:
        """The layers of a U-Net on an NHWC value (NCHW inside, as ONNX's operators are)."""
        self.names = {id(model.inputs[0]): self.node("Transpose", [image], perm=[0, 3, 1, 2])}
        for layer in model.layers[1:]:
            convert = _LAYERS.get(type(layer).__name__)
            if convert is None:
                raise ValueError(
                    f"layer {layer.name}: {type(layer).__name__} has no ONNX form here; "
                    f"known: {', '.join(sorted(_LAYERS))}"
                )
            inputs = layer.input if isinstance(layer.input, list) else [layer.input]
            names = [self.names[id(tensor)] for tensor in inputs]
            self.names[id(layer.output)] = convert(self, layer, names)
        return self.node("Transpose", [self.names[id(model.outputs[0])]], perm=[0, 2, 3, 1])

    def make(self, name: str) -> Any:
        """The graph with its NHWC input and output declared."""
        helper, types = self.helper, self.onnx.TensorProto
        config = self.record.model
        dtype = getattr(types, _ELEMENT_TYPES[self.record.normalization.input_dtype])
        image = helper.make_tensor_value_info(
            self.io_names[0], dtype, ["N", "height", "width", config.in_channels]
        )
        sizes = ["height", "width"] if self.whole_image else ["output_height", "output_width"]
        probabilities = helper.make_tensor_value_info(
            self.io_names[1], types.FLOAT, ["N", *sizes, config.classes]
        )
        return helper.make_graph(self.nodes, name, [image], [probabilities], self.weights)

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        """Adds one node; returns the name of its output."""
        self.count += 1
        output = output or f"{op.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attributes))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        """Adds a weight (an initializer); returns its name."""
        self.weights.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def integer(self, value: Any) -> OnnxInt:
        """An int64 constant (a scalar or a list), or `value` if a graph value already."""
        if isinstance(value, OnnxInt):
            return value
        self.count += 1
        return OnnxInt(self, self.constant(f"int_{self.count}", np.array(value, np.int64)))

    def axes(self, *axes: int) -> str:
        """The axes of an Unsqueeze, as a constant."""
        return self.integer(list(axes)).name

    def real(self, value: float) -> str:
        """A float64 scalar constant."""
        self.count += 1
        return self.constant(f"real_{self.count}", np.array(value, np.float64))

    def scalars(self, *values: OnnxInt) -> str:
        """Scalars as a one-dimensional tensor (part of a shape)."""
        parts = [self.node("Unsqueeze", [value.name, self.axes(0)]) for value in values]
        return parts[0] if len(parts) == 1 else self.node("Concat", parts, axis=0)

    def _normalized_input(self) -> str:
        """Raw pixels -> float32 -> (x - offset) / scale, as `normalize` does."""
        normalization = self.record.normalization
        if normalization.input_dtype not in _ELEMENT_TYPES:
            raise ValueError(
                f"the model was trained on {normalization.input_dtype} images; ONNX "
                f"exports take {', '.join(_ELEMENT_TYPES)}"
            )
        pixels = self.node("Cast", [self.io_names[0]], to=self.onnx.TensorProto.FLOAT)
        offset = self.constant("offset", np.asarray(normalization.offset, np.float32))
        scale = self.constant("scale", np.asarray(normalization.scale, np.float32))
        return self.node("Div", [self.node("Sub", [pixels, offset]), scale])


def _named(graph: _Graph, layer: Any, weights: list[np.ndarray], parts: tuple[str, ...]) -> list:
    """A layer's weights added to the graph, each named after the layer and its part."""
    return [
        graph.constant(f"{graph.prefix}{layer.name}_{part}", np.asarray(weight, np.float32))
        for part, weight in zip(parts, weights, strict=True)
    ]


def _convolution(op: str) -> Any:
    """Conv2D or Conv2DTranspose with its bias and activation."""

    def convert(graph: _Graph, layer: Any, names: list[str]) -> str:
        weights = layer.get_weights()
        # Keras's kernel is (h, w, in, out), transposed (h, w, out, in); ONNX's Conv wants
        # (out, in, h, w), ConvTranspose (in, out, h, w): the same reordering for both.
        weights[0] = np.ascontiguousarray(weights[0].transpose(3, 2, 0, 1))
        attributes = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.strides)}
        if layer.padding == "same" and op == "Conv":
            attributes["pads"] = [k // 2 for k in layer.kernel_size] * 2
        elif layer.padding != "valid":
            raise ValueError(
                f"layer {layer.name}: {layer.padding!r} padding has no ONNX form here"
            )
        inputs = _named(graph, layer, weights, ("W", "B")[: len(weights)])
        result = graph.node(op, [names[0], *inputs], **attributes)
        return _activation(graph, layer.activation.__name__, result, layer.name)

    return convert


def _activation(graph: _Graph, name: str, value: str, layer: str) -> str:
    """A Keras activation on an NCHW value (softmax over the channels)."""
    if name == "linear":
        return value
    ops = {"relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "softmax": ("Softmax", {"axis": 1})}
    if name not in ops:
        raise ValueError(f"layer {layer}: activation {name!r} has no ONNX form here")
    op, attributes = ops[name]
    return graph.node(op, [value], **attributes)


def _batch_norm(graph: _Graph, layer: Any, names: list[str]) -> str:
    """BatchNormalization in inference mode, with the layer's moving statistics."""
    parts = ("gamma", "beta", "mean", "variance")
    inputs = _named(graph, layer, layer.get_weights(), parts)
    return graph.node("BatchNormalization", [names[0], *inputs], epsilon=float(layer.epsilon))


def _max_pool(graph: _Graph, layer: Any, names: list[str]) -> str:
    """MaxPooling2D with valid padding (floor, as Keras)."""
    return graph.node(
        "MaxPool", names, kernel_shape=list(layer.pool_size), strides=list(layer.strides)
    )


def _center_crop(graph: _Graph, layer: Any, names: list[str]) -> str:
    """`CenterCrop2D`: the skip cropped, centred, to the other input's height and width."""
    skip, reference = names
    axes = graph.constant(f"{graph.prefix}{layer.name}_axes", np.array([2, 3], np.int64))
    first = graph.constant(f"{graph.prefix}{layer.name}_first", np.array([2], np.int64))
    last = graph.constant(f"{graph.prefix}{layer.name}_last", np.array([4], np.int64))
    two = graph.constant(f"{graph.prefix}{layer.name}_two", np.array([2], np.int64))
    skip_size = graph.node("Slice", [graph.node("Shape", [skip]), first, last])
    size = graph.node("Slice", [graph.node("Shape", [reference]), first, last])
    start = graph.node("Div", [graph.node("Sub", [skip_size, size]), two])
    return graph.node("Slice", [skip, start, graph.node("Add", [start, size]), axes])


_LAYERS = {
    "Conv2D": _convolution("Conv"),
    "Conv2DTranspose": _convolution("ConvTranspose"),
    "BatchNormalization": _batch_norm,
    "FusedBatchNormalization": _batch_norm,
    "ReLU": lambda graph, layer, names: graph.node("Relu", names),
    "MaxPooling2D": _max_pool,
    "Dropout": lambda graph, layer, names: names[0],  # inference: the identity
    "CenterCrop2D": _center_crop,
    "Concatenate": lambda graph, layer, names: graph.node("Concat", names, axis=1),
}

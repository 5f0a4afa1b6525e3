"""A BioImage.IO model package (model spec 0.5): the model for napari, ilastik, Fiji, QuPath.

The package holds the network as a TensorFlow SavedModel whose `serving_default` takes
normalised float32 images [batch, y, x, channel] of any size and returns the class
probabilities at the same size: the export's own overlap-tile graph (`ServingModule`) with
an identity normalisation, since the package states the stored normalisation as its input
preprocessing. The context margin is the output's halo (tools that cut images into
blocks overlap them by it and crop it), the mask convention and threshold are in the
output's description and in `config.unet_keras`, with a test input and output, the paper
to cite and README.md as documentation.

No ONNX weights: tf2onnx cannot convert the overlap-tile graph (its loops update tensors
in place with TensorStridedSliceUpdate, which has no ONNX counterpart), and the bare
network alone would not be the same model as the SavedModel, which the spec requires.

bioimageio.spec and bioimageio.core are imported inside the functions (the `bioimageio`
extra).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from unet_keras import contract
from unet_keras.exports.savedmodel import ServingModule
from unet_keras.geometry import context_margin, input_size_for_output
from unet_keras.io.atomic import atomic_path
from unet_keras.io.normalization import normalize
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.record import ModelRecord, NormalizationConfig
from unet_keras.saving import load_model

README = Path(__file__).resolve().parents[2] / "README.md"
PAPER = (
    "Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
)
PAPER_DOI = "10.1007/978-3-319-24574-4_28"
INPUT, OUTPUT = "raw", "probabilities"
# Side of the test image: several tiles of a depth-4 network's smallest workable input.
TEST_SIZE = 256


class PackageModule(tf.Module):
    """The packaged graph: normalised float32 images in, probabilities of the same size out."""

    def __init__(self, serving: ServingModule, channels: int) -> None:
        super().__init__(name="unet_bioimageio")
        # The weights are saved through `weights` (the network's own tf.Variables, which
        # session loaders such as deepImageJ's restore too); `serving` stays untracked, as
        # its other signatures (PNG decoding) do not hold for float32 input.
        self.weights = serving.weights
        spec = tf.TensorSpec([None, None, None, channels], tf.float32, INPUT)
        self.serve = tf.function(
            lambda image: {OUTPUT: serving.segment(image)[0]}, input_signature=[spec]
        )


def export_bioimageio(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
) -> Path:
    """Writes the BioImage.IO package (a .zip) of a `.keras` model or run directory.

    `tile`, `overlap` and `threshold` are the graph's (`ServingModule`). An existing file
    is never replaced.
    """
    from bioimageio.spec import save_bioimageio_package

    output = Path(output)
    if output.suffix != ".zip":
        raise ValueError(f"--output {output}: a BioImage.IO package is a .zip file")
    if output.exists():
        raise FileExistsError(f"--output {output}: exists and is never overwritten")
    model, record = load_model(model_path, compile=False)
    # The package normalises as its preprocessing; the graph takes normalised pixels.
    identity = NormalizationConfig("standardize", (0.0,), (1.0,), "float32")
    graph_record = dataclasses.replace(record, normalization=identity)
    serving = ServingModule(model, graph_record, tile=tile, overlap=overlap, threshold=threshold)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        saved = folder / "saved_model"
        module = PackageModule(serving, record.model.in_channels)
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        weights = Path(shutil.make_archive(str(folder / "tf_weights"), "zip", saved))
        image = _test_image(record)
        probabilities = module.serve(normalize(image, record.normalization))[OUTPUT].numpy()
        np.save(folder / "test_input.npy", image)
        np.save(folder / "test_output.npy", probabilities)
        packaged = dataclasses.replace(serving.record, normalization=record.normalization)
        description = describe(packaged, folder, weights)
        with atomic_path(output) as temporary:
            save_bioimageio_package(description, output_path=temporary)
    return output


def _test_image(record: ModelRecord) -> np.ndarray:
    """A synthetic EM section [1, y, x, channel] in the training images' dtype."""
    sample = synthetic_em_images(1, (TEST_SIZE, TEST_SIZE), seed=0)[0]
    image = np.repeat(sample.image[..., :1], record.model.in_channels, axis=-1)
    return image.astype(record.normalization.input_dtype)[np.newaxis]


def describe(record: ModelRecord, folder: Path, weights: Path) -> Any:
    """The spec 0.5 model description of the files in `folder`."""
    from bioimageio.spec.model import v0_5

    depth, classes = record.model.depth, record.model.classes
    margin = context_margin(depth) if record.model.padding == "valid" else 0
    smallest = max(input_size_for_output(1, depth), 2 * margin + 2**depth)
    space = v0_5.ParameterizedSize(min=smallest, step=2**depth)
    channels = [f"channel{i}" for i in range(record.model.in_channels)]
    input_axes = [
        v0_5.BatchAxis(),
        v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=space),
        v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=space),
        v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in channels]),
    ]
    input_id = v0_5.TensorId(INPUT)

    def same_size(axis: str) -> Any:
        size = v0_5.SizeReference(tensor_id=input_id, axis_id=v0_5.AxisId(axis))
        if margin:
            return v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(axis), size=size, halo=margin)
        return v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis), size=size)

    names = ["foreground"] if classes == 1 else [f"class{i}" for i in range(classes)]
    output_axes = [
        v0_5.BatchAxis(),
        same_size("y"),
        same_size("x"),
        v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in names]),
    ]
    inputs = [
        v0_5.InputTensorDescr(
            id=input_id,
            axes=input_axes,
            test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type=record.normalization.input_dtype),
            # The last step's dtype is the network's: without it, tools cast back to uint8.
            preprocessing=[
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                _normalization(record.normalization),
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            ],
        )
    ]
    outputs = [
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId(OUTPUT),
            description=_mask_convention(record),
            axes=output_axes,
            test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )
    ]
    return v0_5.ModelDescr(
        name="unet-keras U-Net",
        description="U-Net (Ronneberger et al. 2015) trained with unet-keras: "
        f"{record.model.filters} filters, depth {depth}, {record.model.padding} padding.",
        authors=[v0_5.Author(name="unet-keras developers")],
        cite=[v0_5.CiteEntry(text=PAPER, doi=v0_5.Doi(PAPER_DOI))],
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=_documentation(folder)),
        tags=["unet", "segmentation", "electron-microscopy", "2d"],
        inputs=inputs,
        outputs=outputs,
        weights=v0_5.WeightsDescr(
            tensorflow_saved_model_bundle=v0_5.TensorflowSavedModelBundleWeightsDescr(
                source=weights, tensorflow_version=v0_5.Version(tf.__version__)
            )
        ),
        config={"unet_keras": {contract.RECORD: record.to_dict()}},
    )


def _documentation(folder: Path) -> Path:
    """README.md of the source tree, or (installed from a wheel, without it) a pointer."""
    if README.is_file():
        return README
    fallback = folder / "README.md"
    fallback.write_text(
        "# unet-keras U-Net\n\nA U-Net trained with unet-keras; see the project's README.\n"
    )
    return fallback


def _normalization(normalization: NormalizationConfig) -> Any:
    """The stored normalisation, (x - offset) / scale, as the spec's preprocessing."""
    from bioimageio.spec.model import v0_5

    offsets, scales = list(normalization.offset), list(normalization.scale)
    if len(offsets) == 1:
        kwargs = v0_5.FixedZeroMeanUnitVarianceKwargs(mean=offsets[0], std=scales[0])
    else:
        kwargs = v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            mean=offsets, std=scales, axis=v0_5.AxisId("channel")
        )
    return v0_5.FixedZeroMeanUnitVarianceDescr(kwargs=kwargs)


def _mask_convention(record: ModelRecord) -> str:
    """How the probabilities become the training masks' values."""
    values = record.mask.class_values
    if record.model.classes == 1:
        return (
            f"Probability of class 1 (mask value {values[1]}, e.g. cell interior); pixels at or "
            f"above {record.threshold_value:g} are mask value {values[1]}, the others "
            f"{values[0]}."
        )
    return f"Probability of each class; the most probable class k is mask value {values}[k]."

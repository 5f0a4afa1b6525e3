"""A BioImage.IO model package (model spec 0.5) that the model zoo accepts: the model for
napari, ilastik, Fiji, QuPath and bioimageio.core.

The package holds the network as a TensorFlow SavedModel whose `serving_default` takes
normalised float32 images [batch, y, x, channel] and returns the class probabilities at
the same size: the export's own overlap-tile graph (`ServingModule`) with an identity
normalisation, since the package states the stored normalisation as its input
preprocessing. Beside it the same network as ONNX (`onnx_export.onnx_model`), for the
tools without a TensorFlow runtime: whole images in, tiled inside the graph as predict
tiles them (`onnx_tiles`), probabilities of the same size out. Its test output is
`unet-keras predict`'s (`Segmenter`, NumPy tiles through Keras), which bioimageio.core's
test then reproduces from each of the weights.

Whole images, as bioimageio.core predicts them, get predict's values: bioimageio.core pads
an input by the output's halo before the graph sees it, and crops the halo off after. The
input therefore declares reflect padding, which is predict's mirroring (`mirror_index`),
and the halo is the context margin rounded up to the pooling grid (`2**depth`), so that
the image's first pixel starts a pooling cell as in predict's tiles. Input sizes are that
grid's multiples past twice the halo, so the last cell is whole and the halo reaches far
enough on that side too.

Weights: `WEIGHT_FORMATS` lists the formats written, the first the source of the others;
a format is one `WeightsFormat` there. zoo metadata (authors, citations, training data,
cover, model card) is `unet_keras.exports.bioimageio_card`'s. bioimageio.spec is imported
inside the functions (the `bioimageio` extra).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from unet_keras import contract
from unet_keras.exports import bioimageio_card as card
from unet_keras.exports.onnx_export import ONNX_OPSET, onnx_model
from unet_keras.exports.savedmodel import ServingModule
from unet_keras.geometry import ceil_div, context_margin
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.atomic import atomic_path
from unet_keras.io.context import with_context
from unet_keras.io.normalization import normalize
from unet_keras.io.readers import read_image, read_pages
from unet_keras.io.synthetic import synthetic_em_images
from unet_keras.record import ModelConfig, ModelRecord, NormalizationConfig
from unet_keras.saving import load_model

log = logging.getLogger(__name__)

INPUT, OUTPUT = "raw", "probabilities"
# Side of the synthetic test image: several tiles of a depth-4 network's smallest input.
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


@dataclasses.dataclass(frozen=True)
class PackageParts:
    """What a weights format is made from: the Keras network, the graph that wraps it (its
    record normalises by identity), the folder the package's files go to, and the test
    input, normalised as the package's preprocessing normalises it."""

    model: keras.Model
    record: ModelRecord
    module: PackageModule
    folder: Path
    test_input: np.ndarray
    tile: int | None = None
    overlap: int | None = None


@dataclasses.dataclass(frozen=True)
class WeightsFormat:
    """One entry of the package's weights: the spec's field name, the function that writes
    its files into `parts.folder` and returns its description, and how closely its output
    must reproduce predict's test output (absolute, per pixel)."""

    field: str
    write: Callable[[PackageParts], Any]
    tolerance: float


def _savedmodel_weights(parts: PackageParts) -> Any:
    """The graph as a zipped SavedModel bundle (the spec's tensorflow_saved_model_bundle)."""
    from bioimageio.spec.model import v0_5

    saved = parts.folder / "saved_model"
    module = parts.module
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    bundle = Path(shutil.make_archive(str(parts.folder / "tf_weights"), "zip", saved))
    return v0_5.TensorflowSavedModelBundleWeightsDescr(
        source=bundle, tensorflow_version=v0_5.Version(tf.__version__)
    )


def _onnx_weights(parts: PackageParts) -> Any:
    """The network as ONNX (`onnx_export`), taking whole images as the SavedModel does."""
    import onnx
    from bioimageio.spec.model import v0_5

    proto = onnx_model(
        parts.model,
        parts.record,
        whole_image=True,
        names=(INPUT, OUTPUT),
        tile=parts.tile,
        overlap=parts.overlap,
    )
    onnx.save(proto, parts.folder / "weights.onnx")
    return v0_5.OnnxWeightsDescr(source=parts.folder / "weights.onnx", opset_version=ONNX_OPSET)


# The first is the source; any other entry's description names it as `parent`.
WEIGHT_FORMATS: tuple[WeightsFormat, ...] = (
    # Measured: 3.6e-7 between the graph and predict on an ISBI section (docs/interop.md).
    WeightsFormat("tensorflow_saved_model_bundle", _savedmodel_weights, 1e-5),
    # Measured: at most 9.2e-7 from predict on ISBI sections, valid and same padding.
    WeightsFormat("onnx", _onnx_weights, 1e-5),
)


def package_sizes(config: ModelConfig) -> tuple[int, int, int]:
    """(halo, smallest input side, step of the input sides) of the package's tensors."""
    step = 2**config.depth
    if config.padding != "valid":
        return 0, step, step
    halo = ceil_div(context_margin(config.depth), step) * step
    return halo, 2 * halo + step, step


def export_bioimageio(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
    test_image: str | os.PathLike | None = None,
    info: card.PackageInfo | None = None,
) -> Path:
    """Writes the BioImage.IO package (a .zip) of a `.keras` model, run directory or shipped
    model's name.

    `tile`, `overlap` and `threshold` are the graph's (`ServingModule`); `test_image` is
    the image whose prediction is the package's test and cover (default: a synthetic EM
    section), cut to the package's sizes; `info` names authors, maintainers, the version and
    the git repository. An existing file is never replaced, and a failed export leaves none.
    """
    from bioimageio.spec import save_bioimageio_package

    output, info = Path(output), info or card.PackageInfo()
    if output.suffix != ".zip":
        raise ValueError(f"--output {output}: a BioImage.IO package is a .zip file")
    if output.exists():
        raise FileExistsError(f"--output {output}: exists and is never overwritten")
    model, record = load_model(model_path, compile=False)
    source = card.provenance(model_path)
    # The package normalises as its preprocessing; the graph takes normalised pixels.
    identity = NormalizationConfig("standardize", (0.0,), (1.0,), "float32")
    graph_record = dataclasses.replace(record, normalization=identity)
    serving = ServingModule(model, graph_record, tile=tile, overlap=overlap, threshold=threshold)
    image = _test_image(record, test_image)
    # predict's own code path, with the graph's tiles, gives the output the package must match.
    expected = Segmenter.from_model(model, record, tile=tile, overlap=overlap)
    probabilities = expected.probabilities(image)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        module = PackageModule(serving, record.model.in_channels)
        normalised = normalize(image[np.newaxis], record.normalization).astype(np.float32)
        parts = PackageParts(model, graph_record, module, folder, normalised, tile, overlap)
        weights = {entry.field: entry.write(parts) for entry in WEIGHT_FORMATS}
        np.save(folder / "test_input.npy", image[np.newaxis])
        np.save(folder / "test_output.npy", probabilities[np.newaxis])
        card.cover_image(image, probabilities, folder / "cover.png")
        packaged = dataclasses.replace(serving.record, normalization=record.normalization)
        description = describe(packaged, folder, weights, info, source)
        with atomic_path(output) as temporary:
            save_bioimageio_package(description, output_path=temporary)
    return output


def _test_image(record: ModelRecord, path: str | os.PathLike | None) -> np.ndarray:
    """The test image [y, x, channel] in the training images' dtype, at a package size."""
    _, smallest, step = package_sizes(record.model)
    dtype, channels = record.normalization.input_dtype, record.model.in_channels
    if path is None:
        side = smallest + ceil_div(max(TEST_SIZE - smallest, 0), step) * step
        sample = synthetic_em_images(1, (side, side), seed=0)[0]
        image = np.repeat(sample.image[..., :1], channels, axis=-1)
        return image.astype(dtype)
    image = _read_test_image(path, record.context_sections)
    if image.dtype != np.dtype(dtype) or image.shape[-1] != channels:
        raise ValueError(
            f"--test-image {path}: {image.shape[-1]} channel(s) of {image.dtype}; the model "
            f"was trained on {channels} channel(s) of {dtype}"
        )
    if min(image.shape[:2]) < smallest:
        raise ValueError(
            f"--test-image {path}: {image.shape[0]} x {image.shape[1]} pixels; the package "
            f"needs at least {smallest} x {smallest}"
        )
    height, width = ((side - smallest) // step * step + smallest for side in image.shape[:2])
    if (height, width) != image.shape[:2]:
        log.info("--test-image %s: its top left %d x %d pixels, a size the package takes",
                 path, height, width)  # fmt: skip
    return image[:height, :width]


def _read_test_image(path: str | os.PathLike, k: int) -> np.ndarray:
    """The test image; for a model with context, a stack's middle section with its K
    neighbours on each side as channels."""
    if not k:
        return read_image(path)
    pages, _ = read_pages(path)
    if len(pages) < 2:
        raise ValueError(
            f"--test-image {path}: a lone image, but the model sees {k} section(s) above and "
            "below each one (its context_sections); give a multi-page TIFF stack: its middle "
            "section with its neighbours as channels is the test input"
        )
    return with_context(pages, len(pages) // 2, k)


def describe(
    record: ModelRecord,
    folder: Path,
    weights: dict[str, Any],
    info: card.PackageInfo | None = None,
    source: card.Provenance | None = None,
) -> Any:
    """The spec 0.5 model description of the files in `folder`."""
    from bioimageio.spec.model import v0_5

    info = info or card.PackageInfo()
    depth, classes = record.model.depth, record.model.classes
    halo, smallest, step = package_sizes(record.model)
    space = v0_5.ParameterizedSize(min=smallest, step=step)
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
        if halo:
            return v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(axis), size=size, halo=halo)
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
            # predict mirrors beyond the image as np.pad's "reflect" does (c b|a b c|b a).
            # `mode` given explicitly: left at its default, bioimageio.spec 0.5.12 writes
            # `pad: {}`, which reads back as the first kind of padding, constant zeros.
            pad=v0_5.ReflectPadding(mode="reflect"),
            # The last step's dtype is the network's: without it, tools cast back to uint8.
            preprocessing=[
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                _normalization(record.normalization),
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            ],
        )
    ]
    convention = _mask_convention(record)
    outputs = [
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId(OUTPUT),
            description=convention,
            axes=output_axes,
            test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )
    ]
    documentation = folder / "README.md"
    documentation.write_text(
        card.model_card(
            record,
            source,
            halo=halo,
            sizes=(smallest, step),
            input_id=INPUT,
            output_id=OUTPUT,
            mask_convention=convention,
        )
    )
    return v0_5.ModelDescr(
        name=f"{source.name} (unet-keras U-Net)" if source else "unet-keras U-Net",
        description=_description(record, source),
        **card.people(info),
        cite=card.citations(source),
        license=v0_5.LicenseId("MIT"),
        version=v0_5.Version(info.version),
        git_repo=info.git_repo,
        documentation=v0_5.FileDescr(source=documentation),
        covers=[v0_5.FileDescr(source=folder / "cover.png")],
        tags=["unet", "segmentation", "electron-microscopy", "2d", "unet-keras"],
        training_data=card.training_data(source),
        inputs=inputs,
        outputs=outputs,
        weights=v0_5.WeightsDescr(**_with_parents(weights)),
        config={
            "unet_keras": {contract.RECORD: record.to_dict()},
            "bioimageio": {
                "architecture_type": f"U-Net 2D, depth {depth}",
                "task": "semantic segmentation",
                "reproducibility_tolerance": [
                    {
                        "absolute_tolerance": entry.tolerance,
                        "relative_tolerance": 0.0,
                        "mismatched_elements_per_million": 0,
                        "weights_formats": [entry.field],
                    }
                    for entry in WEIGHT_FORMATS
                    if entry.field in weights
                ],
            },
        },
    )


def _with_parents(weights: dict[str, Any]) -> dict[str, Any]:
    """The weights entries, each but the first (the source) naming the first as parent."""
    source, *others = weights
    for field in others:
        weights[field] = weights[field].model_copy(update={"parent": source})
    return weights


def _description(record: ModelRecord, source: card.Provenance | None) -> str:
    """The package's one-paragraph description (the zoo warns past 512 characters)."""
    model = record.model
    shape = f"{model.filters} filters, depth {model.depth}, {model.padding} padding"
    text = f"U-Net (Ronneberger et al. 2015) trained with unet-keras: {shape}."
    if record.members > 1:
        text = (
            f"The mean of {record.members} U-Nets (Ronneberger et al. 2015) trained with "
            f"unet-keras, each of {shape}."
        )
    if source is None:
        return text
    text = f"{source.summary}. {text}"
    if source.isbi2012:
        text += (
            " Trained on the ISBI 2012 challenge data, whose terms (no licence identifier is "
            "known) apply to the weights: non-commercial image segmentation software; see "
            "the model card."
        )
    return text[:1024]


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

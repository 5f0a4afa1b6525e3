"""Chunked volumes: Zarr (v2, v3) and OME-Zarr arrays in, viewer-ready OME-Zarr out.

An input is `STORE.zarr` (an array, or an OME-Zarr image: its full-resolution level) or
`STORE.zarr/PATH` (an array or image inside it). Its last two axes are y and x; a third
is z, a stack of sections; other axes (OME-Zarr's t, c) must have one element.

The output store is an OME-Zarr image (NGFF 0.5 in a Zarr v3 store, 0.4 in v2, as the
input's format): the input's pixels at its root, label images under `labels/` (`mask`,
and `objects` when labelled) with their classes' colours and the root as their source,
and an image `probabilities` (classes first) when asked for. Each has a pyramid of levels
(`level_shapes`) with the input's sections, chunks and pixel sizes. The run's records
(its settings, a `progress` array with one element per block, set once the block's
results are written, and the steps finished) are in the hidden group `.unet_keras`.

zarr is imported inside the functions that need it (the `volumes` extra).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unet_keras.io.sample import DataError

ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
# The run's own records (settings, blocks done, steps finished), apart from the OME-Zarr
# groups: a hidden group, which OME-Zarr readers and viewers pass over.
RECORDS = ".unet_keras"
PROGRESS = f"{RECORDS}/progress"
# Where stores of unet-keras before the records group kept their progress.
PROGRESS_BEFORE = "progress"
LABELS = "labels"
# The full-resolution level of each output image, as OME-Zarr names levels.
LEVEL = "0"
MAX_LEVELS = 12
# A viewer's colours of mask classes: class 0, the boundary, clear; then distinct colours.
PALETTE = (
    (0, 0, 0, 0),
    (255, 210, 0, 255),
    (0, 160, 255, 255),
    (255, 60, 60, 255),
    (80, 220, 80, 255),
    (200, 80, 255, 255),
)


@dataclasses.dataclass(frozen=True)
class VolumeInput:
    """Where a volume's pixels are and how its axes map to (sections, rows, columns).

    `layout` has one entry per array axis: "z", "y", "x", or 0 for an axis of one element
    that is left out. `axes` are the OME-Zarr axis records of z (if any), y and x, and
    `scale` their pixel sizes.
    """

    root: str
    path: str
    layout: tuple[str | int, ...]
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    dtype: str
    zarr_format: int
    axes: tuple[dict[str, Any], ...]
    scale: tuple[float, ...]

    @property
    def name(self) -> str:
        """The volume as the user named it."""
        return str(Path(self.root, self.path)) if self.path else self.root

    @property
    def has_sections(self) -> bool:
        """Whether the volume has a z axis (else it is one 2D image)."""
        return "z" in self.layout

    def open(self) -> Any:
        """The zarr array, opened for reading."""
        import zarr

        return zarr.open_array(self.root, path=self.path, mode="r")

    def read(self, array: Any, section: int, rows: tuple[int, int], cols: tuple[int, int]):
        """Pixels [rows) x [cols) of a section as (h, w, 1), in the volume's dtype."""
        spans = {"z": section, "y": slice(*rows), "x": slice(*cols)}
        index = tuple(spans[axis] if isinstance(axis, str) else 0 for axis in self.layout)
        return np.asarray(array[index])[..., np.newaxis]


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether `path` names a Zarr store or a node inside one."""
    path = Path(path)
    return any(part.endswith(".zarr") for part in path.parts) or any(
        (path / marker).is_file() for marker in ZARR_MARKERS
    )


def split_store(path: str | os.PathLike) -> tuple[Path, str]:
    """(store root, path inside it) of `STORE.zarr/PATH`, or of a store not named .zarr."""
    path = Path(path)
    for depth, part in enumerate(path.parts):
        if part.endswith(".zarr"):
            return Path(*path.parts[: depth + 1]), "/".join(path.parts[depth + 1 :])
    return path, ""


def open_volume(path: str | os.PathLike) -> VolumeInput:
    """Describes the Zarr or OME-Zarr volume at `path`; a DataError says what is wrong."""
    import zarr

    root, inner = split_store(path)
    try:
        node = zarr.open(str(root), path=inner, mode="r")
    except (FileNotFoundError, KeyError):
        raise DataError(f"{path}: no Zarr array or group there") from None
    except (ValueError, TypeError) as error:  # zarr's errors for unreadable metadata
        raise DataError(f"{path}: not a readable Zarr store ({error})") from None
    if isinstance(node, zarr.Group):
        multiscales = _multiscales(node.attrs.asdict())
        if multiscales is None:
            arrays = ", ".join(sorted(node.array_keys())) or "none"
            raise DataError(
                f"{path}: a Zarr group without OME-Zarr multiscales; name one of its arrays "
                f"as {path}/ARRAY (arrays: {arrays})"
            )
        level = multiscales["datasets"][0]
        inner = "/".join(p for p in (inner, level["path"]) if p)
        array = zarr.open_array(str(root), path=inner, mode="r")
        axes = [_axis_record(axis) for axis in multiscales["axes"]]
        scale = _scale(level, len(axes))
    else:
        array = node
        names = ("z", "y", "x")[-array.ndim :] if array.ndim in (2, 3) else ()
        if not names:
            raise DataError(
                f"{path}: a {array.ndim}-dimensional array; volumes are (y, x) images or "
                "(z, y, x) stacks of sections (OME-Zarr images may add t and c axes of one)"
            )
        axes = [{"name": name, "type": "space"} for name in names]
        scale = [1.0] * len(axes)
    return _describe(path, root, inner, array, axes, scale)


def _describe(path, root, inner, array, axes, scale) -> VolumeInput:
    """The VolumeInput of `array`, or a DataError naming the axis that does not fit."""
    names = [axis["name"] for axis in axes]
    if len(names) != array.ndim or names[-2:] != ["y", "x"]:
        raise DataError(
            f"{path}: axes {names} for an array of shape {array.shape}; expected the last two "
            "to be y and x"
        )
    layout: list[str | int] = []
    kept = []
    for name, size, axis, pixel in zip(names, array.shape, axes, scale, strict=True):
        if name in ("z", "y", "x"):
            layout.append(name)
            kept.append((axis, pixel))
        elif size == 1:
            layout.append(0)
        else:
            raise DataError(
                f"{path}: axis {name!r} has {size} elements; volumes take one channel and "
                "one time point (predict each as a volume of its own)"
            )
    sizes = dict(zip(names, array.shape, strict=True))
    chunk = dict(zip(names, array.chunks, strict=True))
    return VolumeInput(
        root=str(root),
        path=inner,
        layout=tuple(layout),
        shape=(sizes.get("z", 1), sizes["y"], sizes["x"]),
        chunks=(chunk.get("z", 1), chunk["y"], chunk["x"]),
        dtype=str(array.dtype),
        zarr_format=array.metadata.zarr_format,
        axes=tuple(axis for axis, _ in kept),
        scale=tuple(pixel for _, pixel in kept),
    )


def _multiscales(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The first OME-Zarr multiscales entry (NGFF 0.5 under "ome", 0.4 at the top)."""
    found = attributes.get("ome", attributes).get("multiscales")
    return found[0] if found else None


def _axis_record(axis: Any) -> dict[str, Any]:
    """An axis as a record (NGFF 0.3 lists bare names)."""
    return dict(axis) if isinstance(axis, dict) else {"name": str(axis)}


def _scale(level: dict[str, Any], count: int) -> list[float]:
    """A level's pixel sizes, from its scale transformation (1 where it has none)."""
    for transformation in level.get("coordinateTransformations", []):
        if transformation.get("type") == "scale":
            return [float(v) for v in transformation["scale"]]
    return [1.0] * count


@dataclasses.dataclass(frozen=True)
class OutputImage:
    """One result in the output store: its group (`""`: the root image), dtype, channels
    (0: no channel axis), and whether it is a label image (ids or classes, under
    `labels/`), with the mask value of each class to colour (`classes`)."""

    name: str
    dtype: str
    channels: int = 0
    label: bool = False
    classes: tuple[int, ...] = ()


def level_shapes(source: VolumeInput) -> list[tuple[int, int, int]]:
    """(sections, rows, columns) of each pyramid level: rows and columns halved (rounded
    up) until both fit one chunk; sections are kept, as thick EM sections are."""
    sections, height, width = source.shape
    shapes = [(sections, height, width)]
    while len(shapes) < MAX_LEVELS and (height > source.chunks[1] or width > source.chunks[2]):
        height, width = -(-height // 2), -(-width // 2)
        shapes.append((sections, height, width))
    return shapes


def create_output(
    path: str | os.PathLike,
    source: VolumeInput,
    images: list[OutputImage],
    blocks: tuple[int, int, int],
    settings: dict[str, Any],
) -> bool:
    """Creates the output store for `source`, or checks that the one at `path` is this
    prediction's (same `settings`). Returns True when it already existed (a resume).

    A new store is made under a hidden temporary name and renamed into place, so a store
    at `path` always has all its arrays and levels; existing data is never replaced.
    """
    import zarr

    path = Path(path)
    if path.suffix != ".zarr":
        raise DataError(f"--output {path}: Zarr volumes are written to a store named *.zarr")
    source_root = Path(source.root).resolve()
    target = path.resolve()
    if target == source_root or source_root in target.parents or target in source_root.parents:
        raise DataError(
            f"--output {path}: inside or around the input {source.name}; choose another store"
        )
    if path.exists():
        _check_resumable(path, settings)
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        root = zarr.open_group(str(staging), mode="w", zarr_format=source.zarr_format)
        labels = [Path(image.name).name for image in images if image.label]
        if labels:
            group = root.create_group(LABELS)
            group.attrs.update(_ome(source.zarr_format, {"labels": labels}))
        shapes = level_shapes(source)
        for image in images:
            _fill_image(
                root.require_group(image.name) if image.name else root, source, image, shapes
            )
        records = root.create_group(RECORDS)
        records.attrs.update({"settings": settings, "finished": []})
        records.create_array(
            "progress", shape=blocks, chunks=(1, 1, 1), dtype="uint8", fill_value=0
        )
        os.rename(staging, path)  # fails rather than merges if `path` appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False


def is_finished(path: str | os.PathLike, step: str) -> bool:
    """Whether `step` (labelling, a pyramid level) is marked finished in the store's records."""
    import zarr

    return step in zarr.open_group(str(path), path=RECORDS, mode="r").attrs["finished"]


def mark_finished(path: str | os.PathLike, step: str) -> None:
    """Marks `step` finished in the store's records, once its results are all written."""
    import zarr

    records = zarr.open_group(str(path), path=RECORDS, mode="r+")
    records.attrs["finished"] = [*records.attrs["finished"], step]


def _check_resumable(path: Path, settings: dict[str, Any]) -> None:
    """Raises a DataError unless `path` is an unfinished or finished run of `settings`."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        found = root[RECORDS].attrs.get("settings") if RECORDS in root else None
        earlier = "unet_keras" in root.attrs and PROGRESS_BEFORE in root
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        found, earlier = None, False
    if earlier:
        raise DataError(
            f"--output {path}: a prediction by an earlier unet-keras, with its progress beside "
            "the images (no pyramids, no labels group); it is never overwritten: finish it "
            "with that version, or predict into a new store"
        )
    if found is None:
        raise DataError(
            f"--output {path}: exists and is not a unet-keras prediction; it is never "
            "overwritten, choose another store"
        )
    changed = sorted(key for key in {*settings, *found} if settings.get(key) != found.get(key))
    if changed:
        raise DataError(
            f"--output {path}: holds a prediction with other {', '.join(changed)}; rerun "
            "the command that made it to complete it, or choose another store"
        )


def _ome(zarr_format: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """OME-Zarr attributes as the Zarr format has them: NGFF 0.5 under "ome" (v3), 0.4 at
    the top with a version in each record that has one (v2)."""
    if zarr_format == 3:
        return {"ome": {"version": "0.5", **metadata}}
    versioned = ("multiscales", "image-label")
    return {
        key: (
            [{"version": "0.4", **value[0]}]
            if key == "multiscales"
            else {"version": "0.4", **value}
            if key in versioned
            else value
        )
        for key, value in metadata.items()
    }


def _fill_image(
    group: Any,
    source: VolumeInput,
    image: OutputImage,
    shapes: list[tuple[int, int, int]] | None = None,
) -> Any:
    """Writes an OME-Zarr image's metadata and its empty levels (`shapes`, default: one,
    the source's) into `group`; returns the full-resolution level."""
    axes, scale = list(source.axes), list(source.scale)
    chunks = [source.chunks[1], source.chunks[2]]
    if source.has_sections:
        chunks = [source.chunks[0], *chunks]
    if image.channels:
        axes, scale, chunks = (
            [{"name": "c", "type": "channel"}, *axes],
            [1.0, *scale],
            [image.channels, *chunks],
        )
    datasets, arrays = [], []
    for level, (sections, height, width) in enumerate(shapes or [source.shape]):
        shape = [*([sections] if source.has_sections else []), height, width]
        if image.channels:
            shape = [image.channels, *shape]
        factor = [*scale[:-2], scale[-2] * 2**level, scale[-1] * 2**level]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": factor}]}
        )
        arrays.append(shape)
    metadata: dict[str, Any] = {
        "multiscales": [
            {"name": Path(image.name or source.name).name, "axes": axes, "datasets": datasets}
        ]
    }
    if image.label:
        metadata["image-label"] = _image_label(image)
    group.attrs.update(_ome(source.zarr_format, metadata))
    if source.zarr_format == 3:
        extra = {"dimension_names": [axis["name"] for axis in axes]}
    else:
        extra = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    levels = [
        group.create_array(
            str(level), shape=shape, chunks=chunks, dtype=image.dtype, fill_value=0, **extra
        )
        for level, shape in enumerate(arrays)
    ]
    return levels[0]


def _image_label(image: OutputImage) -> dict[str, Any]:
    """NGFF image-label metadata: the image it labels (the store's root, two groups up)
    and, for a mask, a colour and the class index of each mask value."""
    label: dict[str, Any] = {"source": {"image": "../../"}}
    if image.classes:
        label["colors"] = [
            {"label-value": value, "rgba": list(PALETTE[k % len(PALETTE)])}
            for k, value in enumerate(image.classes)
        ]
        label["properties"] = [
            {"label-value": value, "class": k} for k, value in enumerate(image.classes)
        ]
    return label


def create_volume(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str = "uint8",
    zarr_format: int = 3,
    ome: bool = False,
    scale: tuple[float, ...] | None = None,
) -> Any:
    """An empty (y, x) or (z, y, x) Zarr array to fill, at `path` (a store, or
    `STORE.zarr/ARRAY`); with `ome`, an OME-Zarr image of pixel sizes `scale` whose level
    `0` is the array."""
    import zarr

    root, inner = split_store(path)
    options = {"shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": 0}
    if not ome and not inner:
        return zarr.create_array(str(root), zarr_format=zarr_format, **options)
    if not ome:
        group = zarr.open_group(str(root), mode="a", zarr_format=zarr_format)
        return group.create_array(inner, **options)
    source = VolumeInput(
        root=str(root),
        path=inner,
        layout=("z", "y", "x")[-len(shape) :],
        shape=(shape[0] if len(shape) == 3 else 1, *shape[-2:]),
        chunks=(chunks[0] if len(chunks) == 3 else 1, *chunks[-2:]),
        dtype=dtype,
        zarr_format=zarr_format,
        axes=tuple({"name": name, "type": "space"} for name in ("z", "y", "x")[-len(shape) :]),
        scale=scale or (1.0,) * len(shape),
    )
    image = zarr.open_group(str(root), path=inner, mode="a", zarr_format=zarr_format)
    return _fill_image(image, source, OutputImage(Path(inner).name or root.stem, dtype))

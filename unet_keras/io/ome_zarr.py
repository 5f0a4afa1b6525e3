"""Chunked volumes: Zarr (v2, v3) and OME-Zarr arrays in, chunked predictions out.

An input is `STORE.zarr` (an array, or an OME-Zarr image: its full-resolution level) or
`STORE.zarr/PATH` (an array or image inside it). Its last two axes are y and x; a third
is z, a stack of sections; other axes (OME-Zarr's t, c) must have one element. The output
store holds an OME-Zarr image per result (`mask/0`, `probabilities/0`) with the input's
sections, rows, columns, chunks and scale, in the input's Zarr format (v2: NGFF 0.4, v3:
NGFF 0.5), and a `progress` array with one element per block, set once the block's
results are written: a block is done or it is written again.

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
PROGRESS = "progress"
# The full-resolution level of each output image, as OME-Zarr names levels.
LEVEL = "0"


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
    """One result written per block: its name in the output store, dtype and channels
    (0: no channel axis)."""

    name: str
    dtype: str
    channels: int = 0


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
    at `path` always has all its arrays; existing data is never replaced.
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
        group = zarr.open_group(str(staging), mode="w", zarr_format=source.zarr_format)
        group.attrs["unet_keras"] = settings
        for image in images:
            _create_image(group, source, image)
        group.create_array(PROGRESS, shape=blocks, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
        os.rename(staging, path)  # fails rather than merges if `path` appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False


def _check_resumable(path: Path, settings: dict[str, Any]) -> None:
    """Raises a DataError unless `path` is an unfinished or finished run of `settings`."""
    import zarr

    try:
        found = zarr.open_group(str(path), mode="r").attrs.get("unet_keras")
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        found = None
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


def _create_image(group: Any, source: VolumeInput, image: OutputImage) -> None:
    """An OME-Zarr image `image.name` with one level shaped and chunked like `source`."""
    _fill_image(group.create_group(image.name), source, image)


def _fill_image(group: Any, source: VolumeInput, image: OutputImage) -> Any:
    """Writes an OME-Zarr image's metadata and its empty level into `group`; returns it."""
    sections, height, width = source.shape
    sections_chunk, rows_chunk, cols_chunk = source.chunks
    shape, chunks = [height, width], [rows_chunk, cols_chunk]
    if source.has_sections:
        shape, chunks = [sections, *shape], [sections_chunk, *chunks]
    axes, scale = list(source.axes), list(source.scale)
    if image.channels:
        shape, chunks = [image.channels, *shape], [image.channels, *chunks]
        axes, scale = [{"name": "c", "type": "channel"}, *axes], [1.0, *scale]
    multiscale = {
        "name": image.name,
        "axes": axes,
        "datasets": [
            {"path": LEVEL, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    if source.zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
        extra = {"dimension_names": [axis["name"] for axis in axes]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
        extra = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return group.create_array(
        LEVEL, shape=shape, chunks=chunks, dtype=image.dtype, fill_value=0, **extra
    )


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

"""Reading images, masks and multi-page TIFF stacks from disk, with errors that name the file.

Supported files: PNG (read with Pillow: 8- or 16-bit grey, 8-bit RGB, palette) and TIFF (read
with tifffile: any dtype, grey or multi-channel, single images or multi-page stacks). An alpha
channel is dropped when it is the same everywhere (fully opaque, as most tools save it); an
image whose transparency varies is rejected, since dropping it would change what the image
shows. Bilevel images read as uint8 0/255, as Pillow converts them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from unet_keras.io.sample import DataError, Sample

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# At most this many values (pixels x channels x pages) are read from one file: 2 GiB of
# uint8. Larger stacks belong in chunked storage.
MAX_FILE_VALUES = 2**31


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads one image file as an (H, W, C) array in the file's dtype."""
    path = Path(path)
    pages, is_stack = _read_pages(path, keep_palette=False)
    if is_stack:
        raise DataError(
            f"{path}: a stack of {len(pages)} pages where one image was expected; "
            f"load it with load_dataset({str(path)!r})"
        )
    return pages[0]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads one mask file as an (H, W) array of raw pixel values.

    Palette PNGs give their palette indices (the usual encoding of class-index masks); an RGB
    mask is accepted when its three channels are equal.
    """
    path = Path(path)
    pages, is_stack = _read_pages(path, keep_palette=True)
    if is_stack:
        raise DataError(
            f"{path}: a stack of {len(pages)} pages where one mask was expected; pass the "
            "image and label stacks together to load_dataset"
        )
    return _single_channel(pages[0], path)


def read_pages(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Reads an image file or stack as (pages, H, W, C), and whether it is a multi-page stack."""
    return _read_pages(Path(path), keep_palette=False)


def load_dataset(
    images: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    *,
    require_masks: bool = False,
) -> list[Sample]:
    """Loads image/mask samples from a data folder, an images folder or a TIFF stack.

    `images` is one of:

    - a folder holding `images/` and, optionally, `masks/` (such as ISBI's `train/`); a
      `masks` argument overrides `masks/`;
    - a folder of image files; `masks` names the folder of their masks, if any;
    - an image file or a multi-page TIFF stack (ISBI's `train-volume.tif`); `masks` names its
      label file or stack. A `*-volume.tif` finds its `*-labels.tif` beside it by itself.

    Masks pair with images by file stem, so `00.tif` pairs with `00.png`. Samples come in
    natural order of their stems (`2` before `10`); a stack's pages are named like
    `train-volume.tif[03]`. Hidden files and files that are not PNG or TIFF are ignored.
    Without masks, samples have `mask=None` (images to predict on), unless `require_masks`
    makes that an error. Every image must share one channel count and dtype.
    """
    images = Path(images)
    masks = None if masks is None else Path(masks)
    if images.is_file():
        if masks is None and "-volume" in images.name:
            labels = images.with_name(images.name.replace("-volume", "-labels"))
            masks = labels if labels.is_file() else None
        samples = _load_stack(images, masks)
    elif (images / "images").is_dir():
        if masks is None and (images / "masks").is_dir():
            masks = images / "masks"
        samples = _load_folders(images / "images", masks)
    elif images.is_dir():
        samples = _load_folders(images, masks)
    else:
        raise DataError(f"{images}: no such file or folder")
    if require_masks and samples[0].mask is None:
        raise DataError(
            f"{images}: no masks found; training needs them: add a masks/ folder beside "
            "images/, pass the masks folder or label stack, or name the stack *-volume.tif "
            "with its *-labels.tif beside it"
        )
    return samples


def _load_folders(image_dir: Path, mask_dir: Path | None) -> list[Sample]:
    """Reads the images of a folder with the masks of the same stems from another.

    Every problem is found before any is reported: one error lists them all (unpaired,
    unreadable and mismatched files), so a data set is fixed in one go.
    """
    image_files = list_images(image_dir)
    mask_files = {} if mask_dir is None else list_images(mask_dir)
    problems = []
    if mask_dir is not None:
        lonely_images = [p.name for s, p in image_files.items() if s not in mask_files]
        lonely_masks = [p.name for s, p in mask_files.items() if s not in image_files]
        if lonely_images or lonely_masks:
            problems.append(
                f"{image_dir} and {mask_dir} do not pair up by file stem: images without a "
                f"mask: {_few(lonely_images)}; masks without an image: {_few(lonely_masks)}"
            )
    samples = []
    for stem, image_path in image_files.items():
        try:
            image, mask = read_image(image_path), None
            if stem in mask_files:
                mask = read_mask(mask_files[stem])
                _check_same_size(image, image_path, mask, mask_files[stem])
        except DataError as error:
            problems.append(str(error))
            continue
        if mask_dir is None or stem in mask_files:
            samples.append(Sample(image_path.name, image, mask))
    if samples:
        try:
            _check_alike(samples, image_dir)
        except DataError as error:
            problems.append(str(error))
    if problems:
        count = f"{len(problems)} problems" if len(problems) > 1 else "a problem"
        raise DataError(f"the data set has {count}:\n  " + "\n  ".join(problems))
    return samples


def _load_stack(image_path: Path, mask_path: Path | None) -> list[Sample]:
    """Reads the pages of an image file or stack with those of its label file or stack."""
    if mask_path is not None and not mask_path.is_file():
        raise DataError(
            f"{mask_path}: no such file; with an image file or stack ({image_path}), masks "
            "must name its label file or stack"
        )
    images, is_stack = _read_pages(image_path, keep_palette=False)
    masks = [None] * len(images)
    if mask_path is not None:
        masks, _ = _read_pages(mask_path, keep_palette=True)
        if len(masks) != len(images):
            raise DataError(
                f"{image_path} holds {len(images)} pages but {mask_path} holds {len(masks)}"
            )
        masks = _single_channel(masks, mask_path)
        _check_same_size(images[0], image_path, masks[0], mask_path)
    names = [image_path.name]
    if is_stack:
        width = max(2, len(str(len(images) - 1)))
        names = [f"{image_path.name}[{i:0{width}d}]" for i in range(len(images))]
    return [Sample(n, image, mask) for n, image, mask in zip(names, images, masks, strict=True)]


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Maps the stem of each image file in `folder` to its path, in natural order of stems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(
                f"{folder}: {files[path.stem].name} and {path.name} share the stem "
                f"{path.stem!r}, so neither can be paired; keep one"
            )
        files[path.stem] = path
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return dict(sorted(files.items(), key=lambda item: _natural_key(item[0])))


def _natural_key(stem: str) -> tuple[list[str | int], str]:
    """Sorts `img2` before `img10`; the stem itself breaks ties between letter cases."""
    # re.split with a group alternates text and digits, so strs and ints never meet.
    parts = re.split(r"(\d+)", stem.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], stem


def _read_pages(path: Path, keep_palette: bool) -> tuple[np.ndarray, bool]:
    """Reads a PNG or TIFF as (pages, H, W, C) and whether the file is a multi-page stack.

    Palette PNGs give their indices with `keep_palette` (masks), else their colours.
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: not a PNG or TIFF file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        if path.suffix.lower() == ".png":
            data, has_alpha, is_stack = _read_png(path, keep_palette)
        else:
            data, has_alpha, is_stack = _read_tiff(path)
    except DataError:
        raise
    # Pillow and tifffile raise many types (OSError, ValueError, struct.error...) on bad files.
    except Exception as error:
        raise DataError(
            f"{path}: cannot read it ({error}); is the file truncated or corrupt?"
        ) from error
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if has_alpha:
        data = _drop_alpha(data, path)
    if data.dtype == bool:
        data = data.astype(np.uint8) * 255
    return data, is_stack


def _read_png(path: Path, keep_palette: bool) -> tuple[np.ndarray, bool, bool]:
    """Reads a PNG with Pillow as (1, H, W[, C]), whether it has alpha, is a stack (never)."""
    with Image.open(path) as image:
        # Pillow silently keeps only the high byte of 16-bit colour PNGs.
        if image.mode in ("RGB", "RGBA", "LA") and ";16" in str(image.tile[0].args):
            raise DataError(
                f"{path}: 16-bit colour PNG, which Pillow reads as 8-bit; save it as a "
                "16-bit TIFF instead"
            )
        if image.mode in ("P", "PA") and not keep_palette:
            image = image.convert("RGBA")
        data = np.asarray(image)
        # Older Pillow opens 16-bit grey PNGs as 32-bit "I"; PNG holds at most 16 bits.
        if image.mode == "I":
            data = data.astype(np.uint16)
        return data[np.newaxis], image.mode in ("LA", "RGBA", "PA"), False


def _read_tiff(path: Path) -> tuple[np.ndarray, bool, bool]:
    """Reads a TIFF's first series as (pages, H, W[, C]), whether it has alpha, is a stack."""
    import tifffile  # here: listing a folder (unet-client) needs no tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_size(path, series.shape, series.axes)  # before a single pixel is decoded
        data, axes = series.asarray(), series.axes
        has_alpha = any(kind in (1, 2) for kind in tif.pages[0].extrasamples)
    # 'S' is the samples (colour) axis; every axis other than Y, X and S counts pages.
    if "S" in axes:
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "")
    if not axes.endswith("YX"):
        raise DataError(f"{path}: unsupported TIFF axes {series.axes!r}; expected ...YX[S]")
    is_stack = len(axes) > 2
    pages = data.reshape(-1, *data.shape[len(axes) - 2 :])
    return pages, has_alpha, is_stack


def _check_size(path: Path, shape: tuple[int, ...], axes: str) -> None:
    """Refuses a TIFF whose header claims more than can sensibly be read into memory.

    A compressed TIFF of a megabyte can declare gigapixels (a decompression bomb). Pages
    are held to Pillow's limit for PNG (twice `PIL.Image.MAX_IMAGE_PIXELS`; raise it to
    read larger images) and a whole file to MAX_FILE_VALUES.
    """
    height, width = (shape[axes.index(axis)] if axis in axes else 1 for axis in "YX")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > 2 * limit:
        raise DataError(
            f"{path}: pages of {height} x {width} pixels, more than {2 * limit} (twice "
            "PIL.Image.MAX_IMAGE_PIXELS, the limit that guards against decompression bombs); "
            "raise that limit to read it"
        )
    values = math.prod(shape)
    if values > MAX_FILE_VALUES:
        raise DataError(
            f"{path}: {values} values ({' x '.join(map(str, shape))}), more than "
            f"{MAX_FILE_VALUES} in one file; split the stack"
        )


def _drop_alpha(data: np.ndarray, path: Path) -> np.ndarray:
    """Removes a constant alpha channel (the last); varying transparency is an error."""
    alpha = data[..., -1]
    if np.any(alpha != alpha.flat[0]):
        raise DataError(
            f"{path}: the alpha channel varies, so transparency carries information that would "
            "be lost; save the image without transparency"
        )
    return data[..., :-1]


def _single_channel(mask: np.ndarray, path: Path) -> np.ndarray:
    """Returns (..., H, W) mask values from (..., H, W, C) with C = 1 or equal channels."""
    if mask.shape[-1] > 1 and np.any(mask != mask[..., :1]):
        raise DataError(
            f"{path}: a colour mask with {mask.shape[-1]} differing channels; masks must hold "
            "one value per pixel (grey, palette indices, or RGB with equal channels)"
        )
    return np.ascontiguousarray(mask[..., 0])


def _check_same_size(
    image: np.ndarray, image_path: Path, mask: np.ndarray, mask_path: Path
) -> None:
    """Raises unless the mask covers the image pixel for pixel."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"image {image_path} is {_size(image)} but its mask {mask_path} is {_size(mask)} "
            "(H x W); they must match"
        )


def _check_alike(samples: list[Sample], folder: Path) -> None:
    """Raises unless every image has the channel count and dtype of the first."""
    first = samples[0]
    for sample in samples[1:]:
        if _kind(sample.image) != _kind(first.image):
            raise DataError(
                f"{folder / sample.name} is {_kind(sample.image)} but {folder / first.name} is "
                f"{_kind(first.image)}; all images must share channels and dtype: convert "
                "them alike"
            )


def _kind(image: np.ndarray) -> str:
    """Describes an image's channel count and dtype, like `3-channel uint16`."""
    return f"{image.shape[-1]}-channel {image.dtype}"


def _size(array: np.ndarray) -> str:
    """Formats an array's height and width as `H x W`."""
    return f"{array.shape[0]} x {array.shape[1]}"


def _few(names: list[str], limit: int = 10) -> str:
    """Lists up to `limit` names, then how many more there are."""
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more

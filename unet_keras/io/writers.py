"""Writing images and masks: PNG (8- or 16-bit) or TIFF, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet_keras.io.atomic import atomic_path


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes an (H, W) or (H, W, C) array to PNG or TIFF, chosen by the file suffix.

    PNG holds uint8 (grey, RGB) or uint16 (grey) data; TIFF holds any dtype. The file
    appears complete or not at all.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    suffix = path.suffix.lower()
    if suffix == ".png":
        grey = array.ndim == 2
        if not (array.dtype == np.uint8 or (array.dtype == np.uint16 and grey)):
            raise ValueError(
                f"{path}: PNG holds uint8 grey or RGB, or uint16 grey; got {array.dtype} "
                f"with shape {array.shape}: write a .tif instead"
            )
    elif suffix not in (".tif", ".tiff"):
        raise ValueError(f"{path}: write .png, .tif or .tiff files, not {suffix or 'no suffix'}")
    with atomic_path(path) as temporary:
        if suffix == ".png":
            Image.fromarray(array).save(temporary, format="PNG")
        else:
            tifffile.imwrite(temporary, array)


def write_stack(path: str | os.PathLike, pages: np.ndarray) -> None:
    """Writes (N, H, W) or (N, H, W, C) pages as one multi-page TIFF, atomically."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path}: stacks are written as .tif or .tiff, not {path.suffix!r}")
    pages = np.asarray(pages)
    if pages.ndim == 4 and pages.shape[-1] == 1:
        pages = pages[..., 0]
    if pages.ndim not in (3, 4):
        raise ValueError(f"{path}: a stack is (N, H, W) or (N, H, W, C), got {pages.shape}")
    photometric = "rgb" if pages.ndim == 4 and pages.shape[-1] == 3 else "minisblack"
    with atomic_path(path) as temporary:
        tifffile.imwrite(temporary, pages, photometric=photometric)

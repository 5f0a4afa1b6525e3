"""Segmenting image files, folders and TIFF stacks into masks, probabilities and overlays.

`predict_path` writes, for each input, the mask in the training masks' convention and,
on request, the probability map and an overlay of the predicted boundaries. A single image
`a.png` gives `a.png`, `a_probabilities.png` (or `.tif`), `a_overlay.png` and the labelled
objects `a_labels.tif` (uint32); a stack `v.tif` gives the stacks `v.tif`,
`v_probabilities.tif`, `v_overlay.tif` and `v_labels.tif` (numbered per section, or one
numbering across linked sections). An input that cannot be read or predicted is reported
by name and the others are still processed.

A model with context (`ModelRecord.context_sections` K > 0) predicts each section of a
stack with the K sections above and below it (`unet_keras.io.context`): a TIFF stack's
pages, or a folder's images in name order as one stack (read 2K + 1 at a time, each still
written as its own mask). A lone image has no neighbours and is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import label_objects, link_sections
from unet_keras.inference.overlays import boundary_overlay
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.context import check_stack, with_context
from unet_keras.io.readers import IMAGE_SUFFIXES, list_images, read_pages
from unet_keras.io.sample import DataError
from unet_keras.io.stacks import FolderStack
from unet_keras.io.writers import write_image, write_stack

log = logging.getLogger(__name__)

PROBABILITY_FORMATS = ("png", "tiff")


@dataclasses.dataclass
class PredictionReport:
    """What `predict_path` wrote, and the inputs it could not process with the reason."""

    written: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def predict_path(
    segmenter: Segmenter,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    probabilities: str | None = None,
    overlays: bool = False,
    objects: InstanceConfig | None = None,
    progress: bool = False,
) -> PredictionReport:
    """Segments an image file, a TIFF stack, or every image of a folder into `output`.

    `probabilities` ("png": 16-bit PNG of the foreground probability, one-channel models
    only; "tiff": float32) also writes the probability maps; `overlays` the images with
    the predicted boundaries drawn in; `objects` with `instances` set, the labelled objects.
    """
    objects = objects or InstanceConfig()
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(
            f"probabilities must be one of {PROBABILITY_FORMATS}, got {probabilities!r}"
        )
    if probabilities == "png" and segmenter.classes > 1:
        raise ValueError(
            f"16-bit PNG probability maps hold one channel; this model has {segmenter.classes} "
            "classes: use probabilities='tiff'"
        )
    source, output = Path(source), Path(output)
    files = _input_files(source)
    _refuse_overwriting(files, output)
    report = PredictionReport()
    k = segmenter.context_sections
    # A folder is one stack for a model with context: its files are its sections.
    folder = FolderStack(files[0].parent, 2 * k + 1) if k and not source.is_file() else None
    if folder is not None:
        check_stack(len(folder), k, str(files[0].parent))
    # One bar over the files of a folder; over the tiles of a single (large) image.
    per_file = progress and len(files) > 1
    options = (output, probabilities, overlays, objects, progress and not per_file)
    for index, path in enumerate(tqdm(files, disable=not per_file, unit="image")):
        try:
            if folder is None:
                report.written += _predict_file(segmenter, path, *options)
            else:
                report.written += _predict_sections(
                    segmenter, folder, [index], False, path, *options
                )
        except (DataError, OSError) as error:
            log.error("%s: %s", path, error)
            report.failed.append((str(path), str(error)))
    return report


def _refuse_overwriting(files: list[Path], output: Path) -> None:
    """Stops before anything is written when an output could replace one of the inputs.

    A file's outputs are named after its stem, with .png or .tif by whether it turns out
    to be a stack: both are checked, before any file is read.
    """
    inputs = {path.resolve() for path in files}
    for path in files:
        for name in ("", "_probabilities", "_overlay", "_labels"):
            for suffix in (".png", ".tif"):
                target = output / f"{path.stem}{name}{suffix}"
                if target.resolve() in inputs:
                    raise DataError(
                        f"--output {output}: writing {target.name} would overwrite the input "
                        f"{path}; choose another output folder"
                    )


def _input_files(source: Path) -> list[Path]:
    """The image files to segment: the file itself, or a folder's (or its images/) files."""
    if source.is_file():
        return [source]
    if (source / "images").is_dir():
        source = source / "images"
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    files = list(list_images(source).values())
    log.info("%s: %d image files (%s)", source, len(files), ", ".join(IMAGE_SUFFIXES))
    return files


def _predict_file(
    segmenter: Segmenter,
    path: Path,
    output: Path,
    probabilities: str | None,
    overlays: bool,
    objects: InstanceConfig,
    progress: bool,
) -> list[Path]:
    """Segments one file (every page of a stack) and writes its outputs; returns their paths."""
    pages, is_stack = read_pages(path)
    check_stack(len(pages), segmenter.context_sections, str(path))
    indices = list(range(len(pages)))
    return _predict_sections(
        segmenter,
        pages,
        indices,
        is_stack,
        path,
        output,
        probabilities,
        overlays,
        objects,
        progress,
    )


def _predict_sections(
    segmenter: Segmenter,
    stack: Sequence[np.ndarray],
    indices: list[int],
    is_stack: bool,
    path: Path,
    output: Path,
    probabilities: str | None,
    overlays: bool,
    objects: InstanceConfig,
    progress: bool,
) -> list[Path]:
    """Segments the sections `indices` of `stack`, each with its context, into the outputs
    named after `path`; returns their paths."""
    k = segmenter.context_sections
    pages = [stack[i] for i in indices]
    maps = [
        segmenter.probabilities(
            with_context(stack, i, k), f"{path}[{i}]" if k and is_stack else f"{path}", progress
        )
        for i in indices
    ]
    labels = [segmenter.labels(p) for p in maps]
    masks = np.stack([segmenter.mask(label) for label in labels])
    outputs: dict[Path, np.ndarray] = {}
    suffix = ".tif" if is_stack else ".png"
    outputs[output / f"{path.stem}{suffix}"] = masks
    if probabilities:
        maps = np.stack(maps)
        if probabilities == "png" and not is_stack:
            outputs[output / f"{path.stem}_probabilities.png"] = np.round(
                maps[..., 0] * 65535
            ).astype(np.uint16)
        else:
            outputs[output / f"{path.stem}_probabilities.tif"] = maps
    if overlays:
        overlay = np.stack(
            [boundary_overlay(p, lab) for p, lab in zip(pages, labels, strict=True)]
        )
        outputs[output / f"{path.stem}_overlay{suffix}"] = overlay
    if objects.instances:
        found = np.stack([label_objects(label, objects) for label in labels])
        if objects.link_sections and is_stack:
            found = link_sections(found, objects.min_overlap)
        outputs[output / f"{path.stem}_labels.tif"] = found
    for target, array in outputs.items():
        if is_stack:
            write_stack(target, array)
        else:
            write_image(target, array[0])
    return list(outputs)

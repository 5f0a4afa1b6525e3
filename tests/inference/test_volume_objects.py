"""unet_keras.inference.volume_objects: objects labelled block by block (cc) or section by
section (watershed), merged, equal exactly those of labelling each section whole."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from unet_keras.geometry import plan_blocks
from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import label_objects, link_sections
from unet_keras.inference.volume_objects import ObjectsJob, label_pieces
from unet_keras.io.masks import mask_to_labels
from unet_keras.record import MaskConfig

MASK = MaskConfig((0, 255, 128))  # three classes: boundary, and two kinds of object


def blobs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Mask values of smooth random blobs of two classes, thick enough to cross blocks and
    to overlap from section to section."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=shape), sigma=(0, 3, 3)[-len(shape) :])
    kind = ndi.gaussian_filter(rng.normal(size=shape), sigma=(0, 6, 6)[-len(shape) :])
    values = np.where(field > 0.02, np.where(kind > 0, 255, 128), 0)
    return values.astype(np.uint8)


def make_job(tmp_path, masks: np.ndarray, objects: InstanceConfig, block: int) -> ObjectsJob:
    root = zarr.open_group(tmp_path / "out.zarr", mode="w")
    chunks = (1, 8, 8)[-masks.ndim :]
    root.create_array("mask", shape=masks.shape, chunks=chunks, dtype="uint8")[...] = masks
    root.create_array("objects", shape=masks.shape, chunks=chunks, dtype="uint32", fill_value=0)
    shape = (1, *masks.shape) if masks.ndim == 2 else masks.shape
    return ObjectsJob(
        output=str(tmp_path / "out.zarr"),
        mask_path="mask",
        objects_path="objects",
        mask=MASK,
        objects=objects,
        shape=shape,
        stacked=masks.ndim == 3,
        sections=tuple(plan_blocks(shape[0], 1, 1)),
        rows=tuple(plan_blocks(shape[1], 8, block)),
        cols=tuple(plan_blocks(shape[2], 8, block)),
    )


def whole(masks: np.ndarray, objects: InstanceConfig) -> np.ndarray:
    """Each section labelled whole, then linked: what `predict` does with a stack."""
    sections = masks.reshape(-1, *masks.shape[-2:])
    found = np.stack([label_objects(mask_to_labels(m, MASK), objects) for m in sections])
    if objects.link_sections:
        found = link_sections(found, objects.min_overlap)
    return found.reshape(masks.shape)


def map_here(function, arguments):
    return [function(*args) for args in arguments]


@pytest.mark.parametrize("method", ["cc", "watershed"])
@pytest.mark.parametrize("link", [False, True])
def test_pieces_merged_equal_each_section_labelled_whole(tmp_path, method, link):
    masks = blobs((4, 61, 53))
    objects = InstanceConfig(
        instances=method, seed_height=1.5, min_object_size=4, link_sections=link
    )
    job = make_job(tmp_path, masks, objects, block=16)
    label_pieces(job, map_here)
    expected = whole(masks, objects)
    found = zarr.open_array(tmp_path / "out.zarr/objects", mode="r")[...]
    # Objects across the 16-pixel blocks' borders, and sections to link.
    assert expected.max() > 10 and len(job.pieces) == (4 if method != "cc" else 4 * 4 * 4)
    if link:  # some objects of consecutive sections are joined
        unlinked = whole(
            masks, InstanceConfig(instances=method, seed_height=1.5, min_object_size=4)
        )
        assert expected.max() < sum(int(section.max()) for section in unlinked)
    spans = [len(np.unique(expected[z, :, 14:18][expected[z, :, 14:18] > 0])) for z in range(4)]
    assert min(spans) > 0
    # The same ids, not only the same partition: numbering is canonical.
    assert np.array_equal(found, expected)


def test_a_single_image_is_labelled_block_by_block_as_whole(tmp_path):
    masks = blobs((70, 45), seed=3)
    objects = InstanceConfig(instances="cc")
    job = make_job(tmp_path, masks, objects, block=8)
    label_pieces(job, map_here)
    found = zarr.open_array(tmp_path / "out.zarr/objects", mode="r")[...]
    assert found.max() > 10 and np.array_equal(found, whole(masks, objects))

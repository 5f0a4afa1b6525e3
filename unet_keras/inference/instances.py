"""From a class map to labelled objects: connected components, seeded watershed, 3D linking.

A U-Net for EM predicts membranes and cell interiors; users want the cells as labelled
objects. `instance_labels` turns a class-index image (what `Segmenter.labels` returns, or
a served mask mapped back to classes) into object ids, 0 for the boundary class:

- "cc": the 4-connected components of each object class, numbered apart. This is what
  the ISBI 2012 scores count as objects.
- "watershed": each object class's components split along narrow necks. The seeds are
  the h-maxima of the distance to the boundary (`seed_height`, in pixels): a gap in a
  predicted membrane leaves a neck between two cells, whose distance map has two maxima
  separated by a dip deeper than h, and the seeded watershed cuts the neck. Objects
  smaller than `min_size` pixels give their pixels to a neighbour (or to the boundary when
  they have none).

`link_sections` joins the 2D objects of consecutive sections of a stack into 3D objects.
NumPy, SciPy and scikit-image only, imported when used: the client computes the same
labels from a served mask without TensorFlow.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from unet_keras.inference.inference_settings import InstanceConfig

InstanceMethod = Literal["cc", "watershed"]
INSTANCE_METHODS: tuple[str, ...] = ("cc", "watershed")


def instance_labels(
    classes: np.ndarray,
    method: InstanceMethod = "cc",
    seed_height: float = 16.0,
    min_size: int = 16,
) -> np.ndarray:
    """Labels the objects of a class-index image (H, W): uint32 ids 1..n, 0 for class 0.

    Classes 1.. are objects; each class's objects are numbered apart, so touching objects
    of different classes stay different objects. `seed_height` and `min_size` apply to
    "watershed" only. Negative class indices (unlabelled pixels) are treated as class 0.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"instance_labels needs an (H, W) class-index image, got {classes.shape}")
    if not (np.issubdtype(classes.dtype, np.integer) or classes.dtype == bool):
        raise ValueError(
            f"instance_labels needs integer class indices, got dtype {classes.dtype}; "
            "threshold or argmax the probabilities first"
        )
    if method not in INSTANCE_METHODS:
        raise ValueError(f"instances must be one of {INSTANCE_METHODS}, got {method!r}")
    if seed_height <= 0 or min_size < 1:
        raise ValueError(
            f"watershed needs seed_height > 0 and min_size >= 1, got {seed_height}, {min_size}"
        )
    objects = np.zeros(classes.shape, np.uint32)
    next_id = 0
    for k in np.unique(classes[classes > 0]):
        inside = classes == k
        if method == "cc":
            found = _components(inside)
        else:
            found = _watershed(inside, seed_height, min_size)
        objects[found > 0] = found[found > 0] + next_id
        next_id += int(found.max(initial=0))
    return objects


def label_objects(classes: np.ndarray, config: InstanceConfig) -> np.ndarray:
    """`instance_labels` as `config` sets it: its method (connected components by default)."""
    return instance_labels(
        classes, config.instances or "cc", config.seed_height, config.min_object_size
    )


def _components(inside: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean image, numbered 1..n."""
    from skimage.measure import label

    return label(inside, connectivity=1)


def _watershed(inside: np.ndarray, seed_height: float, min_size: int) -> np.ndarray:
    """Seeded watershed of a boolean image's distance map, numbered 1..n."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    distance = ndi.distance_transform_edt(inside)
    seeds = _components(h_maxima(distance, seed_height).astype(bool) & inside)
    # A component whose distance map never rises seed_height above the boundary (a thin or
    # small cell) has no h-maximum: it is its own seed, so no object is lost.
    components = _components(inside)
    unseeded = np.setdiff1d(np.unique(components[inside]), np.unique(components[seeds > 0]))
    extra = np.isin(components, unseeded)
    seeds[extra] = components[extra] + seeds.max(initial=0)
    found = watershed(-distance, seeds, mask=inside, connectivity=1)
    small = np.flatnonzero(np.bincount(found.ravel())[1:] < min_size) + 1
    if small.size:
        # Flood again from the objects kept: the small ones' pixels join a neighbour.
        found[np.isin(found, small)] = 0
        found = watershed(-distance, found, mask=inside, connectivity=1)
    return relabel_sequential(found)[0]


def link_sections(sections: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """Joins per-section object labels (N, H, W) into 3D objects across consecutive sections.

    Two objects of neighbouring sections become one 3D object when the pixels they share
    are at least `min_overlap` of the smaller of the two. Links chain and branch, so an
    object that spans many sections, or splits, keeps one label. Returns uint32 labels
    numbered 1..n in order of first appearance, 0 where the input is 0.
    """
    sections = np.asarray(sections)
    if sections.ndim != 3:
        raise ValueError(f"link_sections needs (N, H, W) labels, got shape {sections.shape}")
    if not np.issubdtype(sections.dtype, np.integer) or (sections.size and sections.min() < 0):
        raise ValueError("link_sections needs non-negative integer object labels per section")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    # Offsets keep the sections' ids apart: every (section, id) pair is one id.
    counts = [int(section.max(initial=0)) for section in sections]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    global_ids = np.where(sections > 0, sections + offsets[:-1, None, None], 0)
    links = [
        section_links(global_ids[z], global_ids[z + 1], min_overlap)
        for z in range(len(sections) - 1)
    ]
    return join_links(int(offsets[-1]), links)[global_ids]


def section_links(below: np.ndarray, above: np.ndarray, min_overlap: float) -> np.ndarray:
    """The pairs (2, k) of ids, one from each of two consecutive sections, whose objects
    share at least `min_overlap` of the smaller one's pixels."""
    below, above = below.ravel(), above.ravel()
    both = (below > 0) & (above > 0)
    pairs, shared = np.unique(np.stack([below[both], above[both]]), axis=1, return_counts=True)
    smaller = np.minimum(_sizes(below, pairs[0]), _sizes(above, pairs[1]))
    return pairs[:, shared >= min_overlap * smaller]


def _sizes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixels of each of `ids` in `labels` (ids that occur there)."""
    present, counts = np.unique(labels, return_counts=True)
    return counts[np.searchsorted(present, ids)]


def join_links(count: int, links: list[np.ndarray]) -> np.ndarray:
    """A lookup table (count + 1,) from ids 1..count to 3D objects numbered 1..n in order
    of first appearance (lowest id), joining each linked pair; 0 stays 0."""
    parent = np.arange(count + 1)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for pairs in links:
        for a, b in pairs.T:
            parent[root(int(a))] = root(int(b))
    roots = np.array([root(node) for node in range(count + 1)])
    _, first, inverse = np.unique(roots[1:], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return np.concatenate([[0], order[inverse] + 1]).astype(np.uint32)

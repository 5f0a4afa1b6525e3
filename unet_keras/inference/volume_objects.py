"""Labelled objects of a volume, computed in pieces (on a Dask cluster's workers or here)
and merged into exactly the labels of labelling each section whole.

Three passes of tasks, each over pieces of the volume, with the client merging between:

1. Each piece is labelled from its mask and its ids (1..n in the piece) written. "cc"
   pieces are the prediction's blocks; "watershed" pieces are whole sections, one task a
   section: its seeds (h-maxima of the distance to the boundary) and small-object merges
   depend on the whole section, so a block's watershed is not the section's. Each piece
   returns, per id, its section, the order key of its object in the section, and its size.
2. "cc" blocks return the pairs of ids that touch across their right and bottom borders
   (4-connected, same class), and with `link_sections` every piece returns the pixels
   each pair of ids of consecutive sections share. The client joins the touching ids
   (connected components of that graph) and numbers each section's objects as labelling
   the section whole does (by class, then by the first pixel in raster order: what
   scikit-image's `label` gives), then links sections as `link_sections` does (same
   overlaps, same numbering by first appearance).
3. Each piece's ids are replaced by their final ids (a piece gets only its own slice of
   the table).

Memory in a task is one piece; on the client, a few numbers per piece's object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import join_links, label_objects
from unet_keras.io.masks import mask_to_labels
from unet_keras.io.sample import DataError
from unet_keras.record import MaskConfig

# Runs a task function on each of a list of argument tuples; returns the results in order.
TaskMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


@dataclasses.dataclass(frozen=True)
class ObjectsJob:
    """Where the mask and the objects are, how to label, and the pieces: picklable."""

    output: str
    mask_path: str
    objects_path: str
    mask: MaskConfig
    objects: InstanceConfig
    shape: tuple[int, int, int]
    stacked: bool
    sections: tuple[tuple[int, int], ...]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def pieces(self) -> list[tuple[int, int, int]]:
        """(section block, row block, column block) of each piece: blocks for "cc", whole
        sections (one section, all rows and columns) for "watershed"."""
        if self.by_section:
            return [(z, 0, 0) for z in range(self.shape[0])]
        return list(np.ndindex(len(self.sections), len(self.rows), len(self.cols)))

    @property
    def by_section(self) -> bool:
        """Whether pieces are whole sections (watershed's seeds depend on the section)."""
        return (self.objects.instances or "cc") != "cc"

    def spans(self, piece: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
        """[start, stop) of a piece's sections, rows and columns."""
        if self.by_section:
            return (piece[0], piece[0] + 1), (0, self.shape[1]), (0, self.shape[2])
        return self.sections[piece[0]], self.rows[piece[1]], self.cols[piece[2]]

    def where(self, z: int | slice, rows: slice, cols: slice) -> tuple:
        """The index of sections `z`, `rows`, `cols` in the arrays (2D: no section axis)."""
        return (z, rows, cols) if self.stacked else (rows, cols)

    def open(self) -> tuple[Any, Any]:
        """The mask and objects arrays (level 0), opened for writing."""
        import zarr

        return (
            zarr.open_array(self.output, path=self.mask_path, mode="r"),
            zarr.open_array(self.output, path=self.objects_path, mode="r+"),
        )

    def classes(self, masks: Any, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Class indices of a section's region, from the mask's values."""
        return mask_to_labels(np.asarray(masks[self.where(z, rows, cols)]), self.mask, self.output)


def label_pieces(job: ObjectsJob, run: TaskMap) -> None:
    """Labels the objects of `job`'s volume with tasks run by `run`; see the module."""
    pieces = job.pieces
    found = run(label_piece, [(job, piece) for piece in pieces])
    counts = np.array([len(stats[0]) for stats in found], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if offsets[-1] >= 2**32:
        raise DataError(f"{job.output}: more than 2**32 pieces of objects to label")
    sections, keys, sizes = (np.concatenate([[0], *(s[k] for s in found)]) for k in range(3))
    tasks = [(job, piece, offsets) for piece in pieces]
    joins = run(piece_joins, tasks) if not job.by_section or job.objects.link_sections else []
    touching = [pairs for pairs, _ in joins]
    table, per_section = _number_in_sections(int(offsets[-1]), touching, sections, keys)
    if job.objects.link_sections and job.stacked:
        table = _link(job, table, per_section, sections, sizes, [shared for _, shared in joins])
    run(
        relabel_piece,
        [(job, piece, table[offsets[i] : offsets[i + 1] + 1]) for i, piece in enumerate(pieces)],
    )


def label_piece(job: ObjectsJob, piece: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Pass 1: labels a piece's sections and writes its ids (1..n over the piece); returns
    per id its section, order key in the section, and size."""
    masks, objects = job.open()
    (z0, z1), rows, cols = job.spans(piece)
    rows, cols = slice(*rows), slice(*cols)
    width = job.shape[2]
    labelled, sections, keys = [], [], []
    count = 0
    for z in range(z0, z1):
        classes = job.classes(masks, z, rows, cols)
        ids = label_objects(classes, job.objects)
        n = int(ids.max(initial=0))
        if job.by_section:
            order = np.arange(1, n + 1, dtype=np.int64)  # the section's own numbering
        else:
            # Whole-section "cc" numbers objects by class, then by first pixel in raster
            # order: the key of each id, in section coordinates.
            flat = np.flatnonzero(ids)
            local = ids.ravel()[flat]
            first = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
            r, c = np.divmod(flat, ids.shape[1])
            np.minimum.at(first, local, (r + rows.start) * width + c + cols.start)
            kind = np.zeros(n + 1, np.int64)
            kind[local] = np.maximum(classes.ravel()[flat], 0)
            order = (kind * job.shape[1] * width + first)[1:]
        labelled.append(np.where(ids > 0, ids + count, 0).astype(np.uint32))
        sections.append(np.full(n, z, np.int64))
        keys.append(order)
        count += n
    stack = np.stack(labelled)
    objects[job.where(slice(z0, z1), rows, cols)] = stack if job.stacked else stack[0]
    sizes = np.bincount(stack.ravel(), minlength=count + 1)[1:].astype(np.int64)
    return np.concatenate(sections), np.concatenate(keys), sizes


def piece_joins(
    job: ObjectsJob, piece: tuple[int, int, int], offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: the ids (offset to be the volume's) that touch across the piece's right and
    bottom borders (2, k), and the pixels shared by ids of consecutive sections (3, k)."""
    masks, objects = job.open()
    pieces = job.pieces
    index = {p: i for i, p in enumerate(pieces)}
    (z0, z1), (r0, r1), (c0, c1) = job.spans(piece)
    own = int(offsets[index[piece]])

    def ids(z: int, rows: slice, cols: slice, offset: int) -> np.ndarray:
        found = np.asarray(objects[job.where(z, rows, cols)]).astype(np.int64)
        return np.where(found > 0, found + offset, 0)

    touching = []
    if not job.by_section:
        for axis, (stop, size) in enumerate(((r1, job.shape[1]), (c1, job.shape[2]))):
            if stop >= size:
                continue
            neighbour = (piece[0], piece[1] + (axis == 0), piece[2] + (axis == 1))
            other = int(offsets[index[neighbour]])
            inner = (
                (slice(stop - 1, stop), slice(c0, c1))
                if axis == 0
                else (slice(r0, r1), slice(stop - 1, stop))
            )
            outer = (
                (slice(stop, stop + 1), slice(c0, c1))
                if axis == 0
                else (slice(r0, r1), slice(stop, stop + 1))
            )
            for z in range(z0, z1):
                a, b = ids(z, *inner, own), ids(z, *outer, other)
                same = (
                    (a > 0)
                    & (b > 0)
                    & (job.classes(masks, z, *inner) == job.classes(masks, z, *outer))
                )
                touching.append(np.stack([a[same], b[same]]))
    shared = []
    if job.objects.link_sections and job.stacked:
        rows, cols = slice(r0, r1), slice(c0, c1)
        for z in range(z0, min(z1, job.shape[0] - 1)):
            above = (
                piece
                if z + 1 < z1
                else ((z + 1, 0, 0) if job.by_section else (piece[0] + 1, piece[1], piece[2]))
            )
            a, b = ids(z, rows, cols, own), ids(z + 1, rows, cols, int(offsets[index[above]]))
            both = (a > 0) & (b > 0)
            pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
            shared.append(np.concatenate([pairs, counts[np.newaxis]]))
    return _joined(touching, 2), _joined(shared, 3)


def relabel_piece(job: ObjectsJob, piece: tuple[int, int, int], table: np.ndarray) -> None:
    """Pass 3: replaces the piece's ids by their final ids (`table[0]` is 0)."""
    _, objects = job.open()
    (z0, z1), rows, cols = job.spans(piece)
    where = job.where(slice(z0, z1) if job.stacked else 0, slice(*rows), slice(*cols))
    table = np.concatenate([[0], table[1:]]).astype(np.uint32)
    objects[where] = table[np.asarray(objects[where])]


def _joined(parts: list[np.ndarray], rows: int) -> np.ndarray:
    """Arrays of `rows` rows side by side (none: an empty one)."""
    return np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0), np.int64)


def _number_in_sections(
    count: int, touching: list[np.ndarray], sections: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A table from the pieces' ids (0..count) to ids 1..n within each section, touching
    ids joined and objects ordered by their least key; and the objects in each section."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = _joined(touching, 2)
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(count + 1,) * 2)
    _, component = connected_components(graph, directed=False)
    objects = component.max(initial=0) + 1
    least = np.full(objects, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(least, component[1:], keys[1:])
    section = np.zeros(objects, np.int64)
    section[component[1:]] = sections[1:]
    present = np.unique(component[1:])
    order = present[np.lexsort((least[present], section[present]))]
    per_section = np.bincount(section[order], minlength=int(sections.max(initial=0)) + 1)
    starts = np.concatenate([[0], np.cumsum(per_section)])
    rank = np.zeros(objects, np.int64)
    rank[order] = np.arange(len(order)) - starts[section[order]] + 1
    table = rank[component]
    table[0] = 0
    return table, per_section


def _link(
    job: ObjectsJob,
    table: np.ndarray,
    per_section: np.ndarray,
    sections: np.ndarray,
    sizes: np.ndarray,
    shared: list[np.ndarray],
) -> np.ndarray:
    """The table joined with `link_sections`'s: ids numbered across the volume (each
    section's after the previous ones'), linked where objects share `min_overlap` of the
    smaller one, numbered by first appearance."""
    starts = np.concatenate([[0], np.cumsum(per_section)])
    count = int(starts[-1])
    volume = np.where(table > 0, table + starts[sections], 0)  # pieces' ids -> volume's
    object_sizes = np.bincount(volume, weights=sizes, minlength=count + 1).astype(np.int64)
    triples = _joined(shared, 3)
    pairs = np.stack([volume[triples[0]], volume[triples[1]]])
    pairs, where = np.unique(pairs, axis=1, return_inverse=True)
    overlap = np.bincount(where.ravel(), weights=triples[2], minlength=pairs.shape[1])
    smaller = np.minimum(object_sizes[pairs[0]], object_sizes[pairs[1]])
    links = pairs[:, overlap >= job.objects.min_overlap * smaller]
    return join_links(count, [links])[volume]

"""The U-Net paper's per-pixel loss weights (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

`w_c(x) = N / (K * N_c)` for the class c of pixel x, where N is the pixel count, N_c that of
class c and K the number of classes present, so every present class carries the same total
weight N / K and balanced classes get 1. A cell is a 4-connected component of the foreground
(class index != 0); d1 and d2 are the Euclidean distances (pixel centre to pixel centre) to the
nearest and the second-nearest cell. The border term is added on background pixels only: those
are the gaps between touching cells that the paper's Fig. 3d weights highly (inside a cell
d1 = 0). With fewer than two cells d2 is infinite and the term vanishes.

Sparse annotations: unlabelled pixels (`IGNORED`) get weight 0, are counted in no class
(N and N_c count labelled pixels only) and are no cell: distances reach labelled cells.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from unet_keras.io.masks import IGNORED

# The border term is dropped where it would stay below this, which bounds the error it causes.
NEGLIGIBLE_WEIGHT = 1e-6


def border_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, num_classes: int | None = None
) -> np.ndarray:
    """Returns the paper's weight map w(x) (float32, H x W) for a class-index map `labels`.

    Class 0 is the background (membrane); `num_classes`, when given, bounds the class indices;
    `IGNORED` pixels get weight 0.
    """
    labels = _checked_labels(labels, num_classes)
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"border weights need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    weights = _class_balance(labels)
    if w0 > 0:
        nearest, second = _two_nearest_cell_distances(labels > 0, _cutoff(w0, sigma))
        border = w0 * np.exp(-((nearest + second) ** 2) / (2.0 * sigma**2))
        weights += np.where(labels == 0, border, 0.0)
    weights[labels == IGNORED] = 0.0
    return weights.astype(np.float32)


def _checked_labels(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Validates a class-index map and returns it as an intp array."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (H, W) class-index map, got {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(
            f"labels must hold integer class indices, got dtype {labels.dtype}; "
            "map mask pixel values to classes first (MaskConfig.class_values)"
        )
    if labels.min() < IGNORED:
        raise ValueError(
            f"labels must be class indices >= 0, or {IGNORED} for unlabelled pixels; got "
            f"{labels.min()}"
        )
    if num_classes is not None and labels.max() >= num_classes:
        raise ValueError(
            f"labels hold class {labels.max()}, outside 0..{num_classes - 1} "
            f"for num_classes={num_classes}"
        )
    return labels.astype(np.intp)


def _class_balance(labels: np.ndarray) -> np.ndarray:
    """Returns w_c(x) = N / (K * N_c) as float64, K counting the classes present; 0 where
    unlabelled."""
    labelled = labels != IGNORED
    counts = np.bincount(labels[labelled])
    present = counts > 0
    per_class = np.zeros(counts.size + 1, np.float64)  # the last entry: IGNORED (index -1)
    per_class[:-1][present] = labelled.sum() / (present.sum() * counts[present])
    return per_class[labels]


def _cutoff(w0: float, sigma: float) -> float:
    """Distance beyond which w0 * exp(-d^2 / (2 sigma^2)) < NEGLIGIBLE_WEIGHT.

    Distances to cells farther than this are not computed. A pixel loses its border term only
    when its second-nearest cell lies beyond the cutoff, and then d1 + d2 > cutoff, so the
    term it loses is below NEGLIGIBLE_WEIGHT (for w0 = 10, sigma = 5: a cutoff of 28.4 px).
    """
    return sigma * math.sqrt(2.0 * math.log(max(w0 / NEGLIGIBLE_WEIGHT, 1.0)))


def _two_nearest_cell_distances(
    foreground: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Returns per-pixel distances to the nearest and the second-nearest cell.

    Distances beyond `cutoff` may come back as inf: the border term does not need them.
    """
    cells, _ = ndi.label(foreground)
    nearest = np.full(cells.shape, np.inf)
    second = np.full(cells.shape, np.inf)
    reach = math.ceil(cutoff)
    # A distance transform per cell over its bounding box grown by the cutoff, not over the
    # whole image: hundreds of cells per ISBI mask would otherwise cost hundreds of full EDTs.
    # Within the box the distances are exact, as the box holds all of the cell's pixels.
    for index, box in enumerate(ndi.find_objects(cells), start=1):
        grown = tuple(
            slice(max(axis.start - reach, 0), min(axis.stop + reach, size))
            for axis, size in zip(box, cells.shape, strict=True)
        )
        distance = ndi.distance_transform_edt(cells[grown] != index)
        near, next_near = nearest[grown], second[grown]
        np.minimum(next_near, np.maximum(near, distance), out=next_near)
        np.minimum(near, distance, out=near)
    return nearest, second

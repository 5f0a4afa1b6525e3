"""A deterministic synthetic EM-like data set, so everything runs with no download.

The images imitate serial-section EM of neural tissue (ISBI 2012): grey cells separated by thin
dark membranes, interiors with smooth shading and dark vesicles, then grain and blur. The mask
is drawn first and the image rendered from it, so masks are exact. They follow the ISBI
convention: 255 = cell interior, 0 = membrane (about 15-25 % of the pixels).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from unet_keras.io.sample import Sample

# Seed spacing in pixels, drawn per image: it sets the cell size and so the membrane fraction.
CELL_SPACING = (22.0, 32.0)


def synthetic_em_images(
    count: int = 24, size: tuple[int, int] = (512, 512), seed: int = 0
) -> list[Sample]:
    """Returns `count` EM-like samples: uint8 images (H, W, 1), uint8 masks (H, W) in {0, 255}."""
    shape = tuple(int(v) for v in size)
    # Below 64 px an image may hold a single cell and no membrane at all.
    if count < 0 or len(shape) != 2 or min(shape) < 64:
        raise ValueError(
            f"synthetic_em_images needs count >= 0 and a size (H, W) of at least (64, 64), "
            f"got count={count}, size={size}"
        )
    # One generator per index: image i is the same whatever `count` is.
    return [
        _sample(np.random.default_rng([seed, index]), shape, f"synthetic_{index:02d}")
        for index in range(count)
    ]


def _sample(rng: np.random.Generator, shape: tuple[int, int], name: str) -> Sample:
    """Draws one cell layout, its exact mask and its image."""
    cells = _cell_layout(rng, shape)
    membrane = _membranes(rng, cells)
    mask = np.where(membrane, 0, 255).astype(np.uint8)
    return Sample(name, _render(rng, cells, membrane)[..., np.newaxis], mask)


def _cell_layout(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Returns a cell id per pixel: a Voronoi diagram of jittered grid seeds, with wavy borders."""
    spacing = rng.uniform(*CELL_SPACING)
    # A jittered grid covers the image evenly, like tissue, yet gives irregular cells.
    grid = np.mgrid[0 : shape[0] + spacing : spacing, 0 : shape[1] + spacing : spacing]
    seeds = grid.reshape(2, -1).T + rng.uniform(-0.45, 0.45, (grid[0].size, 2)) * spacing
    # Dropping some seeds merges neighbours into larger cells: sizes then vary as in tissue.
    seeds = seeds[rng.random(len(seeds)) < 0.75]
    seeds = np.clip(np.rint(seeds), 0, np.array(shape) - 1).astype(np.intp)
    seed_ids = np.zeros(shape, np.intp)
    seed_ids[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    nearest = ndi.distance_transform_edt(
        seed_ids == 0, return_distances=False, return_indices=True
    )
    # Reading the diagram at smoothly displaced positions bends its straight borders.
    rows = np.arange(shape[0])[:, None] + 4 * _smooth_noise(rng, shape, 24)
    cols = np.arange(shape[1]) + 4 * _smooth_noise(rng, shape, 24)
    rows = np.clip(rows, 0, shape[0] - 1).astype(np.intp)
    cols = np.clip(cols, 0, shape[1] - 1).astype(np.intp)
    # Flat indices: one-dimensional gathers are several times faster than two-dimensional ones.
    nearest_seed = (nearest[0] * shape[1] + nearest[1]).ravel()
    return seed_ids.ravel()[nearest_seed[rows * shape[1] + cols]]


def _membranes(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """Marks membrane pixels: a band 2 or 4 px wide, varying along it, on every cell border."""
    # Both pixels of each differing 4-neighbour pair: a 2 px band that separates the cells.
    border = np.zeros(cells.shape, bool)
    across_rows = cells[1:] != cells[:-1]
    across_cols = cells[:, 1:] != cells[:, :-1]
    border[1:] |= across_rows
    border[:-1] |= across_rows
    border[:, 1:] |= across_cols
    border[:, :-1] |= across_cols
    return border | (ndi.binary_dilation(border) & (_smooth_noise(rng, cells.shape, 32) > -0.5))


def _render(rng: np.random.Generator, cells: np.ndarray, membrane: np.ndarray) -> np.ndarray:
    """Renders the EM-like uint8 image of a cell layout."""
    shape = cells.shape
    image = rng.uniform(150, 200, cells.max() + 1)[cells] + 10 * _smooth_noise(rng, shape, 48)
    # Vesicles: dark single pixels that the final blur spreads into blobs about 3 px across.
    count = rng.poisson(0.004 * cells.size)
    image[rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)] -= rng.uniform(
        150, 400, count
    )
    image[membrane] = 60
    # Noise before the blur: grain a few pixels across, like EM, rather than pixel noise.
    image = image.astype(np.float32) + 30 * rng.standard_normal(shape, np.float32)
    image = ndi.gaussian_filter(image, 1.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Returns a random field with features about `scale` px across and values of about +-1."""
    return _upsample(
        rng.standard_normal((shape[0] // scale + 3, shape[1] // scale + 3)), shape, scale
    )


def _upsample(coarse: np.ndarray, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Interpolates values on a grid `scale` px apart to `shape` with Gaussian weights.

    Two small matrix products: smooth like a spline, and far cheaper than `ndimage.zoom`. They
    stay in float64 so that rounding differences between BLAS builds stay far below anything
    that could flip a threshold drawn from these fields, and a seed's bytes do not depend on
    the machine.
    """
    rows = _interpolation_weights(shape[0], coarse.shape[0], scale)
    cols = _interpolation_weights(shape[1], coarse.shape[1], scale)
    return _blocked_matmul(_blocked_matmul(rows, coarse), cols.T)


def _blocked_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns a @ b, computed in row blocks of at most 2**18 multiply-adds each.

    OpenBLAS runs products that small on one thread. Threading them gains nothing here and,
    on a busy 2-core machine, made generating the data set up to three times slower.
    """
    rows = max(1, 2**18 // (a.shape[1] * b.shape[1]))
    product = np.empty((a.shape[0], b.shape[1]))
    for start in range(0, len(a), rows):
        np.matmul(a[start : start + rows], b, out=product[start : start + rows])
    return product


@functools.lru_cache(maxsize=32)
def _interpolation_weights(size: int, knots: int, scale: int) -> np.ndarray:
    """Returns the (size, knots) weights of `_upsample`; cached, as every image reuses them."""
    offsets = np.arange(size)[:, None] / scale + 1 - np.arange(knots)
    weights = np.exp(-0.5 * (offsets / 0.6) ** 2)
    # Far weights would be subnormal, which slows the products; they are zero in effect.
    weights[weights < 1e-6] = 0.0
    weights.flags.writeable = False
    return weights

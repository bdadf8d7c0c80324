"""Vectorised shape primitives shared by the radiograph and CT phantoms.

All functions work on normalised coordinate grids and return float32 arrays in 0..1
(soft edges about one pixel wide, so shapes do not alias when downsampled).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np


def soft_inside(signed: np.ndarray, edge: float) -> np.ndarray:
    """Map a signed inside-distance (positive inside) to a 0..1 mask with a linear ramp of ``edge``."""
    return np.clip(signed / edge + 0.5, 0.0, 1.0).astype(np.float32)


def ellipse_radius(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse centred at ``(cu, cv)``."""
    return np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)


def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float, edge: float) -> np.ndarray:
    """Soft ellipse mask; ``edge`` is the ramp width in the units of ``u``."""
    r = ellipse_radius(u, v, cu, cv, au, av)
    return soft_inside((1.0 - r) * min(au, av), edge)


def dome(r: np.ndarray) -> np.ndarray:
    """Thickness profile of a sphere/cylinder through a disc: ``sqrt(1 - r^2)`` inside, 0 outside."""
    return np.sqrt(np.clip(1.0 - r * r, 0.0, None)).astype(np.float32)


def polyline_distance(
    u: np.ndarray, v: np.ndarray, points: np.ndarray, reach: float | None = None
) -> np.ndarray:
    """Distance from every grid point to a polyline given as ``(K, 2)`` points ``(u, v)``.

    With ``reach``, only the bounding box of the polyline grown by ``reach`` is computed
    (``u``/``v`` must then be a regular ``meshgrid``); elsewhere the result is ``inf``.
    That keeps thin structures (tubes, clavicles) cheap on large images.
    """
    best = np.full(u.shape, np.inf, dtype=np.float32)
    if reach is not None:
        cols, rows = u[0], v[:, 0]
        c0, c1 = np.searchsorted(cols, [points[:, 0].min() - reach, points[:, 0].max() + reach])
        r0, r1 = np.searchsorted(rows, [points[:, 1].min() - reach, points[:, 1].max() + reach])
        if c1 <= c0 or r1 <= r0:
            return best
        best[r0:r1, c0:c1] = polyline_distance(u[r0:r1, c0:c1], v[r0:r1, c0:c1], points)
        return best
    for (u0, v0), (u1, v1) in itertools.pairwise(points):
        du, dv = u1 - u0, v1 - v0
        length2 = du * du + dv * dv
        if length2 == 0:
            t = np.zeros_like(u)
        else:
            t = np.clip(((u - u0) * du + (v - v0) * dv) / length2, 0.0, 1.0)
        d = np.hypot(u - (u0 + t * du), v - (v0 + t * dv))
        np.minimum(best, d, out=best)
    return best


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian-filtered white noise (``sigma`` in pixels)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    std = float(field.std()) or 1.0
    return (field - field.mean()) / std


_BANK_SEED = 20261122


@lru_cache(maxsize=8)
def _texture_bank(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Two smoothed noise fields of twice ``shape`` (fixed seed), cut into per-study textures."""
    rng = np.random.default_rng(_BANK_SEED)
    big = (2 * shape[0], 2 * shape[1])
    if sigma <= 0:  # white noise
        return rng.standard_normal((2, *big), dtype=np.float32)
    return np.stack([smooth_noise(rng, big, sigma) for _ in range(2)])


def texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Like :func:`smooth_noise` for 2D, but a random crop and flip of a cached bank.

    Filtering a fresh noise field per study dominated radiograph rendering time; a
    crop at a random offset of a larger pre-filtered field has the same statistics.
    """
    bank = _texture_bank(tuple(shape), round(float(sigma), 3))
    k = int(rng.integers(len(bank)))
    r0 = int(rng.integers(shape[0]))
    c0 = int(rng.integers(shape[1]))
    out = bank[k, r0:r0 + shape[0], c0:c0 + shape[1]]
    if rng.random() < 0.5:
        out = out[::-1]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def bbox(mask: np.ndarray) -> list[int] | None:
    """Inclusive-exclusive bounding box of a boolean mask.

    2D: ``[x0, y0, x1, y1]`` in (column, row) pixels; 3D ``(x, y, z)`` arrays:
    ``[x0, y0, z0, x1, y1, z1]`` in voxel indices. None when the mask is empty.
    """
    if not mask.any():
        return None
    if mask.ndim == 2:
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return [int(i[0]) for i in idx] + [int(i[-1]) + 1 for i in idx]

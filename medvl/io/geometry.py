"""Slice geometry shared by the series reader and the multi-frame reader.

DICOM places pixel ``(column i, row j)`` of a slice at (PS3.3 C.7.6.2.1.1)::

    P(i, j) = ImagePositionPatient + i * dc * X + j * dr * Y       (LPS, mm)

with ``X`` / ``Y`` the row / column direction cosines of ImageOrientationPatient
and ``(dr, dc)`` = PixelSpacing (row spacing first). Slices are ordered along the
normal ``X x Y`` by the projection of their positions; the slice step comes from
the positions, never from SliceThickness or InstanceNumber.

The volume is then turned into the nibabel/MONAI convention: axes ``(x, y, z)`` in
RAS+, exactly as ``nibabel.as_closest_canonical`` orders a NIfTI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations

from medvl.errors import SeriesError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class StackOrder:
    """Result of :func:`order_slices`.

    Attributes:
        order: indices that sort the input slices along the normal.
        positions: the sorted ImagePositionPatient values, ``(N, 3)``.
        step: mean slice offset vector between neighbours (mm, LPS).
        spacing: slice spacing in mm (the norm of ``step``).
        normal: unit slice normal ``X x Y``.
        distances: sorted positions projected on the normal, ``(N,)``.
        uniform: False when gaps are uneven (only with ``allow_nonuniform``).
    """

    order: np.ndarray
    positions: np.ndarray
    step: np.ndarray
    spacing: float
    normal: np.ndarray
    distances: np.ndarray
    uniform: bool = True


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal ``X x Y`` of an ImageOrientationPatient value (6 numbers)."""
    iop = np.asarray(orientation, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:6])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return n / norm


def orientation_label(orientation: Sequence[float], tolerance: float = 0.9) -> str:
    """``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"`` from ImageOrientationPatient.

    Named when the slice normal is within ~25 degrees (``|cos| >= tolerance``) of a
    patient axis.
    """
    n = np.abs(slice_normal(orientation))
    axis = int(n.argmax())
    if n[axis] < tolerance:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def orientations_match(a: Sequence[float], b: Sequence[float], tol: float = 1e-4) -> bool:
    """True when two ImageOrientationPatient values agree within ``tol``."""
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=tol))


def order_slices(
    orientation: Sequence[float],
    positions: np.ndarray,
    *,
    where: str | Path | None = None,
    names: Sequence[str] | None = None,
    spacing_tolerance: float = 0.01,
    allow_nonuniform: bool = False,
) -> StackOrder:
    """Sort slices along their normal and check that they form a regular stack.

    Args:
        orientation: the common ImageOrientationPatient.
        positions: ImagePositionPatient of each slice, ``(N, 3)``.
        where: the series path, for error messages.
        names: a label per slice (file name or frame number), for error messages.
        spacing_tolerance: allowed relative deviation of each gap from the median gap.
        allow_nonuniform: accept uneven gaps (the caller resamples); duplicates
            are still an error.

    Raises:
        SeriesError: duplicate positions, uneven spacing (a missing slice), or
            positions that do not lie on one line.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    labels = list(names) if names is not None else [f"slice {i}" for i in range(len(pos))]
    normal = slice_normal(orientation)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    pos, dist = pos[order], dist[order]
    n = len(pos)
    if n == 1:
        return StackOrder(order, pos, normal.copy(), 1.0, normal, dist)
    gaps = np.diff(dist)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        a, b = labels[order[dup[0]]], labels[order[dup[0] + 1]]
        raise SeriesError(
            f"{dup.size} duplicated slice position(s), e.g. {a} and {b} at "
            f"{dist[dup[0]]:.3f} mm along the normal (several acquisitions, echoes or "
            "phases in one series?)",
            path=where, field="ImagePositionPatient", expected="one slice per position",
        )
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > spacing_tolerance * median)
    if bad.size and not allow_nonuniform:
        k = bad[0]
        raise SeriesError(
            f"non-uniform slice spacing: gap of {gaps[k]:.3f} mm between {labels[order[k]]} "
            f"and {labels[order[k + 1]]} where the usual gap is {median:.3f} mm "
            f"({bad.size} irregular gap(s); a missing slice?); pass "
            "allow_nonuniform=True to resample onto a uniform grid",
            path=where, field="ImagePositionPatient",
            expected=f"gaps within {spacing_tolerance:.0%} of each other",
        )
    if bad.size:  # resampled later onto the median gap
        step = (pos[-1] - pos[0]) / float(dist[-1] - dist[0]) * median
    else:
        step = (pos[-1] - pos[0]) / float(n - 1)
    # positions must lie on the line P0 + t * step / |step| (gantry tilt keeps a line)
    direction = (pos[-1] - pos[0]) / np.linalg.norm(pos[-1] - pos[0])
    rel = pos - pos[0]
    off_line = np.linalg.norm(rel - np.outer(rel @ direction, direction), axis=1)
    if off_line.max() > max(0.05 * median, 1e-3):
        k = int(off_line.argmax())
        raise SeriesError(
            f"slice positions do not lie on one line ({labels[order[k]]} is "
            f"{off_line[k]:.3f} mm off it)",
            path=where, field="ImagePositionPatient", expected="a single stack of slices",
        )
    return StackOrder(order, pos, step, float(np.linalg.norm(step)), normal, dist, not bad.size)


def stack_affine_lps(
    orientation: Sequence[float] | np.ndarray, first_position: Sequence[float] | np.ndarray,
    pixel_spacing: Sequence[float] | np.ndarray, step: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Voxel ``(i=column, j=row, k=slice)`` to LPS mm affine of a sorted stack."""
    iop = np.asarray(orientation, dtype=np.float64)
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * dc
    aff[:3, 1] = iop[3:6] * dr
    aff[:3, 2] = np.asarray(step, dtype=np.float64)
    aff[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return aff


def to_canonical(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a ``(i, j, k)`` array with an LPS affine to RAS+ closest-canonical axes.

    Uses nibabel's orientation tools, so the result equals what
    ``nibabel.as_closest_canonical`` gives for a NIfTI holding the same voxels.

    The returned array keeps the memory layout of its source where it can (a
    slice stack comes back Fortran-ordered, like nibabel's own arrays): a C-order
    copy would transpose the whole volume through the cache, which costs more than
    decoding it.

    Returns:
        ``(array, affine)`` with a float32 array (positive strides) and a 4x4 RAS+ affine.
    """
    affine_ras = LPS_TO_RAS @ affine_lps
    ornt = orientations.io_orientation(affine_ras)
    target = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    if np.array_equal(ornt, target):
        out, new_affine = array, affine_ras
    else:
        transform = orientations.ornt_transform(ornt, target)
        out = orientations.apply_orientation(array, transform)
        new_affine = affine_ras @ orientations.inv_ornt_aff(transform, array.shape[:3])
    if any(st < 0 for st in out.strides):
        out = out.copy(order="K")  # flips become a layout-preserving copy with positive strides
    return out.astype(np.float32, copy=False), new_affine


@dataclass(frozen=True)
class CanonicalPlan:
    """How to place an ``(i, j, k)`` stack in RAS+ closest-canonical order without a copy.

    Attributes:
        flip: per input axis (i, j, k), whether it runs backwards in the output.
        axes: ``np.transpose`` order taking the flipped ``(i, j, k)`` array to output axes.
        affine: the 4x4 RAS+ affine of the output array.
    """

    flip: tuple[bool, bool, bool]
    axes: tuple[int, int, int]
    affine: np.ndarray


def canonical_plan(affine_lps: np.ndarray, shape: Sequence[int]) -> CanonicalPlan:
    """The reorientation :func:`to_canonical` would do, as flips plus an axis order.

    A reader that knows the plan before decoding can write each slice already
    flipped and return a transposed view, avoiding a second pass over the volume.
    """
    affine_ras = LPS_TO_RAS @ affine_lps
    ornt = orientations.io_orientation(affine_ras)
    transform = orientations.ornt_transform(ornt, np.array([[0, 1], [1, 1], [2, 1]], dtype=float))
    flip = tuple(bool(transform[a, 1] < 0) for a in range(3))
    axes = tuple(int(a) for p in range(3) for a in range(3) if int(transform[a, 0]) == p)
    affine = affine_ras @ orientations.inv_ornt_aff(transform, tuple(shape)[:3])
    return CanonicalPlan(flip, axes, affine)  # type: ignore[arg-type]


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each array axis (column norms of the affine)."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def resample_uniform(stack: np.ndarray, dist: np.ndarray, spacing: float) -> tuple[np.ndarray, int]:
    """Linearly resample a ``(i, j, k)`` stack at slice distances ``dist`` onto a uniform grid.

    Returns:
        the resampled stack and its number of slices.
    """
    n_new = round((dist[-1] - dist[0]) / spacing) + 1
    targets = dist[0] + spacing * np.arange(n_new)
    idx = np.clip(np.searchsorted(dist, targets, side="right") - 1, 0, len(dist) - 2)
    frac = ((targets - dist[idx]) / (dist[idx + 1] - dist[idx])).astype(np.float32)
    out = stack[..., idx] * (1 - frac) + stack[..., idx + 1] * frac
    return out.astype(np.float32, copy=False), n_new

"""DICOM series reader: a directory of single-slice files -> one RAS+ volume.

Files are grouped by SeriesInstanceUID; slices are ordered along the normal of
ImageOrientationPatient by the projection of ImagePositionPatient (so oblique
stacks work and InstanceNumber / file names are never trusted); the slice step
comes from the positions, not from SliceThickness.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medvl.errors import ImageReadError, SeriesError
from medvl.io import dicom_pixels as px
from medvl.io.dicom import image_from_dataset, pixel_spacing_of, safe_tags
from medvl.io.geometry import (
    canonical_plan,
    order_slices,
    orientation_label,
    orientations_match,
    resample_uniform,
    stack_affine_lps,
    to_canonical,
    voxel_sizes,
)
from medvl.io.image import MedicalImage


def _list_files(directory: Path, recursive: bool) -> list[Path]:
    pattern = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in pattern if p.is_file() and not p.name.startswith("."))


# Folders up to this size are read whole in one pass; bigger ones defer pixel data
# (read again per slice at decode time) so memory holds one series, not the folder.
READ_WHOLE_BYTES = 768 * 2**20


def _meant_as_dicom(path: Path) -> bool:
    """Whether a file that did not read as DICOM was meant to be one: empty, named like
    one, or starting with a (zero) preamble. Notes, thumbnails and checksums are not."""
    if path.name.lower().endswith((".dcm", ".dicom", ".ima")):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError:
        return True
    return len(head) == 0 or head == bytes(len(head))


def scan_series(
    directory: str | Path, *, recursive: bool = False, load_pixels: bool | None = False,
    unreadable: list[tuple[Path, str]] | None = None,
) -> tuple[dict[str, list[tuple[Path, Dataset]]], int]:
    """Read the headers of every DICOM image file in a directory, grouped by series.

    A file that cannot be read although it was meant to be a slice (empty, truncated,
    corrupt header) is an error naming it, so a series never comes back a slice short
    without saying so; pass ``unreadable`` to collect them instead.

    Args:
        directory: the folder.
        recursive: include sub-folders.
        load_pixels: read pixel data now (one pass per file); ``False`` defers it
            (read when a slice is decoded); ``None`` decides by the folder's size
            (:data:`READ_WHOLE_BYTES`).
        unreadable: if given, damaged files are appended here as ``(path, reason)``
            instead of raising.

    Returns:
        ``({series_uid: [(path, dataset), ...]}, number of files skipped)``;
        non-DICOM files and DICOM objects without pixel data are skipped.

    Raises:
        SeriesError: a damaged file (unless ``unreadable`` collects it).
    """
    d = Path(directory)
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped = 0
    files = _list_files(d, recursive)
    if load_pixels is None:
        load_pixels = sum(f.stat().st_size for f in files) <= READ_WHOLE_BYTES
    defer = None if load_pixels else 1024
    for f in files:
        try:
            ds = px.open_dicom(f, defer_size=defer)
        except ImageReadError as exc:
            if exc.message.startswith("not a DICOM file") and not _meant_as_dicom(f):
                skipped += 1  # notes, thumbnails, checksums next to the slices
                continue
            # a damaged slice must not silently become a "missing slice"
            if unreadable is not None:
                unreadable.append((f, exc.message))
                continue
            raise SeriesError(f"damaged DICOM file {f.name} in series folder: {exc.message}",
                              path=d, field="allow_gaps",
                              expected="every DICOM file in the folder readable, "
                                       "or allow_gaps=True to read the series without it") from None
        if not any(k in ds for k in px.PIXEL_KEYWORDS):
            skipped += 1
            continue
        groups[str(ds.get("SeriesInstanceUID", "") or "")].append((f, ds))
    return dict(groups), skipped


@dataclass(frozen=True)
class SeriesInfo:
    """Non-identifying summary of one series in a folder (see :func:`list_series`).

    Attributes:
        series_uid: SeriesInstanceUID, to pass as ``read_image(..., series_uid=)``.
        series_number: SeriesNumber, or None.
        modality: Modality.
        n_files: number of image files.
        rows: Rows of the first file.
        columns: Columns of the first file.
        orientation: ``axial`` / ``coronal`` / ``sagittal`` / ``oblique``, or
            ``unknown`` without ImageOrientationPatient.
        slice_thickness: SliceThickness (mm), or None.
        convolution_kernel: CT reconstruction kernel, or None.
        image_type: ImageType values.
    """

    series_uid: str
    series_number: int | None
    modality: str
    n_files: int
    rows: int
    columns: int
    orientation: str
    slice_thickness: float | None
    convolution_kernel: str | None
    image_type: tuple[str, ...]


def _joined(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _info(uid: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    ds = items[0][1]

    def num(kw: str, cast):
        try:
            v = ds.get(kw)
            out = cast(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None
        return None if isinstance(out, float) and not math.isfinite(out) else out

    iop = ds.get("ImageOrientationPatient")
    try:
        orientation = orientation_label([float(v) for v in iop]) if iop and len(iop) == 6 else "unknown"
    except (TypeError, ValueError):
        orientation = "unknown"
    kernel = ds.get("ConvolutionKernel")  # multi-valued in some vendors' files
    return SeriesInfo(
        series_uid=uid, series_number=num("SeriesNumber", int), modality=str(ds.get("Modality") or "OT"),
        n_files=len(items), rows=num("Rows", int) or 0, columns=num("Columns", int) or 0,
        orientation=orientation, slice_thickness=num("SliceThickness", float),
        convolution_kernel=_joined(kernel),
        image_type=tuple(str(v) for v in (ds.get("ImageType") or ())),
    )


def list_series(directory: str | Path, *, recursive: bool = False) -> list[SeriesInfo]:
    """Summaries of the DICOM image series in a folder, sorted by series number.

    Use it to pick a series (thin axial lung kernel, say) before
    ``read_image(folder, series_uid=...)``. Only non-identifying fields are returned.
    """
    groups, _ = scan_series(directory, recursive=recursive)
    infos = [_info(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda i: (i.series_number is None, i.series_number or 0, i.series_uid))


def _describe(uid: str, items: list[tuple[Path, Dataset]]) -> str:
    i = _info(uid, items)
    extra = ", ".join(str(v) for v in (i.orientation, i.convolution_kernel) if v and v != "unknown")
    return (f"{uid or '<no SeriesInstanceUID>'} (series {i.series_number if i.series_number is not None else '?'}, "
            f"{i.modality}, {i.n_files} file(s){', ' + extra if extra else ''})")


def read_dicom_series(
    directory: str | Path,
    *,
    series_uid: str | None = None,
    max_voxels: int | None = None,
    allow_nonuniform: bool = False,
    allow_gaps: bool = False,
    spacing_tolerance: float = 0.01,
    recursive: bool = False,
) -> MedicalImage:
    """Read a directory holding one DICOM series as a volume ``(x, y, z)`` in RAS+.

    Args:
        directory: folder of DICOM files (other files are ignored).
        series_uid: which series to read when the folder holds several.
        max_voxels: refuse volumes with more voxels than this, before decoding.
        allow_nonuniform: resample uneven slice gaps (e.g. a missing slice) onto a
            uniform grid at the median gap instead of raising.
        allow_gaps: leave out files that cannot be read (empty, truncated) instead of
            raising; the volume is resampled over the gaps they leave and the result
            says what is missing: ``tags["unreadable_slices"]`` (how many files) and
            ``tags["missing_slices"]`` (``{"after_slice", "position_mm", "count"}`` per
            gap, slices counted from the first in stack order; a slice missing at an
            end of the stack leaves no gap to find).
        spacing_tolerance: allowed relative deviation of a gap from the median.
        recursive: also look in sub-folders.

    Raises:
        SeriesError: several series and no selector, mixed orientations or sizes,
            duplicated or missing slice positions, missing geometry tags, a damaged
            file (without ``allow_gaps``).
        ImageReadError: a slice cannot be decoded (names the file).
    """
    d = Path(directory)
    if not d.is_dir():
        raise ImageReadError("directory not found", path=d)
    unreadable: list[tuple[Path, str]] = []
    groups, skipped = scan_series(d, recursive=recursive, load_pixels=None,
                                  unreadable=unreadable if allow_gaps else None)
    if not groups:
        raise SeriesError("no DICOM image files in directory", path=d,
                          expected="a folder holding one DICOM series")
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesError(
                f"series {series_uid} not in directory; found: "
                + "; ".join(_describe(u, g) for u, g in groups.items()),
                path=d, field="SeriesInstanceUID")
        items = groups[series_uid]
    elif len(groups) > 1:
        raise SeriesError(
            f"directory holds {len(groups)} series: "
            + "; ".join(_describe(u, g) for u, g in sorted(groups.items())),
            path=d, field="SeriesInstanceUID", expected="one series, or series_uid=<uid>")
    else:
        items = next(iter(groups.values()))
    # a gap left by an unreadable slice makes the spacing uneven: resampled, and said so
    opts: dict[str, Any] = {"max_voxels": max_voxels, "allow_nonuniform": allow_nonuniform or bool(unreadable),
                            "spacing_tolerance": spacing_tolerance}
    if len(items) == 1:
        f, ds = items[0]
        image = image_from_dataset(ds, f, **opts)
    else:
        image = _assemble(d, items, **opts)
    image.tags["skipped_files"] = skipped
    if allow_gaps:
        image.tags["unreadable_slices"] = len(unreadable)
        image.tags.setdefault("missing_slices", [])
    return image


def _gaps(distances: np.ndarray) -> list[dict[str, Any]]:
    """Where slices are missing: gaps of about two or more typical steps between neighbours."""
    steps = np.diff(np.asarray(distances, dtype=np.float64))
    if steps.size < 2:
        return []
    typical = float(np.median(steps))
    out = []
    for k, step in enumerate(steps):
        count = round(step / typical) - 1 if typical > 0 else 0
        if count >= 1 and step > 1.5 * typical:
            out.append({"after_slice": k, "position_mm": round(float(distances[k]) + typical, 3), "count": count})
    return out


def _check_same(d: Path, items: list[tuple[Path, Dataset]], keyword: str, values: list) -> None:
    counts = Counter(values)
    if len(counts) > 1:
        (common, _), (other, _) = counts.most_common(2)
        bad = next(f.name for (f, _), v in zip(items, values, strict=True) if v == other)
        raise SeriesError(
            f"slices differ in {keyword}: {dict(counts)} (e.g. {bad} has {other}, most have {common})",
            path=d, field=keyword, expected="the same value in every slice of a series")


def _assemble(
    d: Path, items: list[tuple[Path, Dataset]], *, max_voxels: int | None,
    allow_nonuniform: bool, spacing_tolerance: float,
) -> MedicalImage:
    names = [f.name for f, _ in items]
    for f, ds in items:
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames > 1:
            raise SeriesError(f"multi-frame file {f.name} in a multi-file series", path=d,
                              field="NumberOfFrames", expected="single-frame slices, or read the file alone")
        for kw in ("ImageOrientationPatient", "ImagePositionPatient"):
            value = ds.get(kw)
            if value is None or len(value) != (6 if kw == "ImageOrientationPatient" else 3):
                raise SeriesError(f"slice {f.name} has no valid {kw}", path=d, field=kw,
                                  expected="geometry tags in every slice")
    geoms = [[float(v) for v in ds.ImageOrientationPatient] for _, ds in items]
    first = geoms[0]
    bad = [n for n, g in zip(names, geoms, strict=True) if not orientations_match(g, first)]
    if bad:
        raise SeriesError(
            f"mixed orientations in one series: {len(bad)} of {len(items)} slices "
            f"(e.g. {bad[0]}) differ from {names[0]}", path=d, field="ImageOrientationPatient",
            expected="one ImageOrientationPatient per series")
    _check_same(d, items, "Rows", [int(ds.get("Rows") or 0) for _, ds in items])
    _check_same(d, items, "Columns", [int(ds.get("Columns") or 0) for _, ds in items])
    spacings = [pixel_spacing_of(ds, 0, f)[0] for f, ds in items]
    _check_same(d, items, "PixelSpacing", [tuple(round(v, 4) for v in s) for s in spacings])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    order = order_slices(first, positions, where=d, names=names,
                         spacing_tolerance=spacing_tolerance, allow_nonuniform=allow_nonuniform)
    missing = _gaps(order.distances)
    f0, ds0 = items[int(order.order[0])]
    rows, cols, _, samples = px.pixel_geometry(ds0, f0)
    px.check_size(rows * cols * len(items) * samples, max_voxels, d, f"{rows}x{cols}x{len(items)} slices")
    pi = px.photometric(ds0)
    if pi == "RGB":
        raise SeriesError("colour series cannot form a volume", path=d,
                          field="PhotometricInterpretation", expected="MONOCHROME1 or MONOCHROME2")
    n = len(items)
    affine_lps = stack_affine_lps(first, order.positions[0], spacings[0], order.step)
    # Uniform stacks are written straight into RAS+ order: each slice lands flipped in
    # its final slot, and the volume is a transposed view (no second pass, no copy).
    plan = canonical_plan(affine_lps, (cols, rows, n)) if order.uniform else None
    flip_i, flip_j, flip_k = plan.flip if plan else (False, False, False)
    in_plane = (slice(None, None, -1 if flip_j else 1), slice(None, None, -1 if flip_i else 1))
    stack = np.empty((n, rows, cols), dtype=np.float32)  # (k, row=j, col=i)
    for k, idx in enumerate(order.order):
        f, ds = items[int(idx)]
        raw = px.decode_pixels(ds, f)
        if raw.shape != (rows, cols):
            raise SeriesError(f"slice {f.name} decodes to {raw.shape}", path=d, field="Rows",
                              expected=f"({rows}, {cols})")
        target = stack[n - 1 - k if flip_k else k]
        if ds.get("ModalityLUTSequence"):
            target[...] = px.modality_lut(raw, ds, None)[in_plane]
        else:  # rescale in place: no temporary per slice
            target[...] = raw[in_plane]
            slope, intercept = px.rescale_of(ds, f) or (1.0, 0.0)
            if slope != 1.0:
                target *= np.float32(slope)
            if intercept != 0.0:
                target += np.float32(intercept)
        del ds.PixelData  # frees the encoded bytes and pydicom's cached array as we go
    tags = safe_tags(ds0)
    tags.update(n_slices=n, spacing_source=pixel_spacing_of(ds0)[1], geometry="series positions")
    if missing:
        tags["missing_slices"] = missing
    volume = stack.transpose(2, 1, 0)  # (i=col, j=row, k) view
    if plan is not None:
        array, affine = volume.transpose(plan.axes), plan.affine
    else:
        volume, n_new = resample_uniform(volume, order.distances, float(np.median(np.diff(order.distances))))
        tags.update(resampled=True, n_slices=n_new)
        array, affine = to_canonical(volume, affine_lps)
    return MedicalImage(
        array=array, spacing=voxel_sizes(affine), affine=affine,
        modality=str(ds0.get("Modality") or "OT"), photometric_interpretation=pi,
        windows=px.windows_of(ds0), tags=tags, path=d,
        voi_function=str(ds0.get("VOILUTFunction") or "LINEAR").upper(), voi_luts=px.voi_luts_of(ds0),
    )

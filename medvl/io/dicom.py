"""Single-file DICOM reader: one radiograph or slice, or one multi-frame object.

A single-frame file gives a 2D image ``(rows, cols)``. A multi-frame grayscale file
(Enhanced CT/MR, RT Dose, ...) is a volume: frames are placed with the per-frame
functional groups (Plane Position / Plane Orientation / Pixel Measures / Pixel
Value Transformation) and returned in RAS+ like a series. Pass ``frame=i`` to read
one frame as 2D instead.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medvl.errors import ImageReadError
from medvl.io import dicom_pixels as px
from medvl.io.geometry import (
    order_slices,
    resample_uniform,
    stack_affine_lps,
    to_canonical,
    voxel_sizes,
)
from medvl.io.image import MedicalImage

# Tags safe to hand on: acquisition and display facts, nothing that identifies a
# person, a date, a place or an instance (PS3.15 Table E.1-1 removes all of those).
SAFE_TAGS: tuple[str, ...] = (
    "Modality", "SOPClassUID", "BodyPartExamined", "ViewPosition", "ImageLaterality",
    "Laterality", "PatientOrientation", "PatientPosition", "ImageType", "Manufacturer",
    "ManufacturerModelName", "KVP", "SliceThickness", "SpacingBetweenSlices",
    "ConvolutionKernel", "MagneticFieldStrength", "RepetitionTime", "EchoTime",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "SamplesPerPixel", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "VOILUTFunction", "PresentationLUTShape", "WindowCenterWidthExplanation",
    "PixelSpacing", "ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor",
    "LossyImageCompression", "BurnedInAnnotation", "DoseUnits", "DoseGridScaling",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "Units", "SeriesNumber",
)


def _plain(value: Any) -> Any:
    """A DICOM value as JSON-friendly Python (DS -> float, IS -> int, UID -> str)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    return str(value)


_SAFE_TAG_NUMBERS = tuple((kw, Tag(keyword_dict[kw])) for kw in SAFE_TAGS)


def safe_tags(ds: Dataset) -> dict[str, Any]:
    """The non-identifying tags of a dataset (see :data:`SAFE_TAGS`)."""
    out: dict[str, Any] = {}
    present = ds.keys()  # one set lookup per tag: keyword lookups cost ~1 ms per file
    for kw, tag in _SAFE_TAG_NUMBERS:
        if tag in present:
            try:
                v = _plain(ds[tag].value)
            except Exception:  # noqa: BLE001, S112 - a malformed value is simply not reported
                continue
            if v not in (None, "", []):
                out[kw] = v
    ts = px.transfer_syntax(ds)
    if ts:
        out["TransferSyntaxUID"] = ts
    return out


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of functional-group ``sequence`` for ``frame``: per-frame first, then shared."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > idx:
            inner = seq[idx].get(sequence)
            if inner:
                return inner[0]
    return None


#: Largest pixel or slice spacing taken as real, in mm (a metre per pixel is no image).
MAX_SPACING_MM = 1000.0


def pixel_spacing_of(ds: Dataset, frame: int = 0, path: Path | None = None) -> tuple[tuple[float, float], str]:
    """``((row_spacing, col_spacing), source)`` in mm, looking where each IOD keeps it.

    Projection radiographs often carry only ImagerPixelSpacing, measured at the
    detector; divided by EstimatedRadiographicMagnificationFactor it approximates the
    size in the patient (PS3.3 C.8.11.7), and the source says so.

    Raises:
        ImageReadError: a spacing that is infinite, NaN or absurd (above
            :data:`MAX_SPACING_MM`), naming the tag; unreadable or non-positive values
            fall through to the next source (the result then says ``"assumed"``).
    """
    measures = _group_item(ds, frame, "PixelMeasuresSequence")
    for item, key in ((measures, "PixelSpacing"), (ds, "PixelSpacing"), (ds, "ImagerPixelSpacing")):
        if item is not None and item.get(key) is not None:
            try:
                r, c = (float(v) for v in item.get(key))
            except (TypeError, ValueError):
                continue
            if not (math.isfinite(r) and math.isfinite(c)) or max(r, c) > MAX_SPACING_MM:
                raise ImageReadError(f"{key} {list(item.get(key))!r} is not a usable spacing", path=path,
                                     field=key, expected=f"two finite spacings in mm, at most {MAX_SPACING_MM:g}")
            if r > 0 and c > 0:
                if key == "ImagerPixelSpacing":
                    try:
                        mag = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
                    except (TypeError, ValueError):
                        mag = 0.0
                    if mag > 0 and math.isfinite(mag):
                        return (r / mag, c / mag), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
                return (r, c), key
    return (1.0, 1.0), "assumed"


def _frame_rescale(ds: Dataset, frame: int, path: Path) -> tuple[float, float] | None:
    return px.rescale_of(_group_item(ds, frame, "PixelValueTransformationSequence"), path) \
        or px.rescale_of(ds, path)


def read_dicom_file(
    path: str | Path,
    *,
    frame: int | None = None,
    max_voxels: int | None = None,
    allow_nonuniform: bool = False,
    spacing_tolerance: float = 0.01,
) -> MedicalImage:
    """Read one DICOM file as a :class:`MedicalImage` in physical units.

    Args:
        path: a DICOM Part 10 file.
        frame: for a multi-frame file, read only this frame (0-based) as a 2D image.
        max_voxels: refuse images with more values than this, before decoding.
        allow_nonuniform: multi-frame only; resample uneven frame positions.
        spacing_tolerance: multi-frame only; allowed relative deviation of gaps.

    Raises:
        ImageReadError: the file cannot be read; the message names the file and why.
    """
    p = Path(path)
    ds = px.open_dicom(p)
    return image_from_dataset(ds, p, frame=frame, max_voxels=max_voxels,
                              allow_nonuniform=allow_nonuniform, spacing_tolerance=spacing_tolerance)


def image_from_dataset(
    ds: Dataset, path: Path, *, frame: int | None = None, max_voxels: int | None = None,
    allow_nonuniform: bool = False, spacing_tolerance: float = 0.01,
) -> MedicalImage:
    """Build a :class:`MedicalImage` from an opened dataset (see :func:`read_dicom_file`)."""
    rows, cols, frames, samples = px.pixel_geometry(ds, path)
    n_read = 1 if frame is not None else frames
    px.check_size(rows * cols * n_read * samples, max_voxels, path, f"{rows}x{cols}x{n_read}x{samples}")
    if frame is not None and not 0 <= frame < frames:
        raise ImageReadError(f"frame {frame} out of range", path=path, field="NumberOfFrames",
                             expected=f"0 <= frame < {frames}")
    pi = px.photometric(ds)
    if frames > 1 and frame is None and pi == "RGB":
        raise ImageReadError(
            f"colour multi-frame object ({frames} frames, e.g. an ultrasound cine) has no "
            "volume geometry", path=path, field="NumberOfFrames",
            expected="frame=<index> to read one frame",
        )
    raw = px.decode_pixels(ds, path, index=frame if frames > 1 else None)
    if frames > 1 and frame is None and raw.shape[0] != frames:  # decoders may drop a singleton frame axis
        raise ImageReadError(f"decoded {raw.shape} for {frames} frames", path=path, field="NumberOfFrames")
    windows = px.windows_of(ds) or px.windows_of(_group_item(ds, frame or 0, "FrameVOILUTSequence"))
    tags = safe_tags(ds)
    common: dict[str, Any] = {
        "modality": str(ds.get("Modality") or "OT"), "photometric_interpretation": pi,
        "windows": windows, "tags": tags, "path": path,
        "voi_function": str(ds.get("VOILUTFunction") or "LINEAR").upper(),
        "voi_luts": px.voi_luts_of(ds) if pi != "RGB" else [],
    }
    dose = px.tag_float(ds, "DoseGridScaling", 1.0, path, positive=True) \
        if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") not in (None, "") else None
    if frames == 1 or frame is not None:
        index = frame or 0
        stored = raw
        if pi == "RGB":
            arr = stored.astype(np.float32)
            # palette LUT entries are often 16-bit although pixels store 8 bits: the
            # display range is that of the RGB values, not of BitsStored
            tags["color_bits"] = 8 * stored.dtype.itemsize if str(ds.get("PhotometricInterpretation", "")) \
                .strip().upper() == "PALETTE COLOR" else int(ds.get("BitsStored") or 8)
        else:
            arr = px.modality_lut(stored, ds, _frame_rescale(ds, index, path))
            if dose is not None:
                arr *= np.float32(dose)
        spacing, source = pixel_spacing_of(ds, index, path)
        tags["spacing_source"] = source
        return MedicalImage(array=arr, spacing=spacing, affine=None, **common)
    return _volume_from_frames(ds, path, raw, common, dose=dose,
                               allow_nonuniform=allow_nonuniform, spacing_tolerance=spacing_tolerance)


def _frame_geometry(ds: Dataset, frames: int) -> tuple[list[list[float]], np.ndarray] | None:
    """Per-frame (orientation, positions) from functional groups or RT Dose grid offsets."""
    if ds.get("PerFrameFunctionalGroupsSequence"):
        orients, positions = [], []
        for i in range(frames):
            pos = _group_item(ds, i, "PlanePositionSequence")
            ori = _group_item(ds, i, "PlaneOrientationSequence")
            if pos is None or ori is None or pos.get("ImagePositionPatient") is None \
                    or ori.get("ImageOrientationPatient") is None:
                return None
            positions.append([float(v) for v in pos.ImagePositionPatient])
            orients.append([float(v) for v in ori.ImageOrientationPatient])
        return orients, np.asarray(positions)
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and ds.get("ImagePositionPatient") and ds.get("ImageOrientationPatient"):
        iop = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        offs = np.asarray([float(v) for v in offsets])
        if len(offs) != frames:
            return None
        # PS3.3 C.8.8.3.2: offsets are relative to the first frame (or absolute when it is 0)
        base = ipp if offs[0] == 0 else ipp - offs[0] * normal
        return [iop] * frames, base + offs[:, None] * normal
    return None


def _volume_from_frames(
    ds: Dataset, path: Path, raw: np.ndarray, common: dict[str, Any], *, dose: float | None,
    allow_nonuniform: bool, spacing_tolerance: float,
) -> MedicalImage:
    frames = raw.shape[0]
    rescales = [_frame_rescale(ds, i, path) for i in range(frames)]
    if ds.get("ModalityLUTSequence") or len(set(rescales)) == 1:
        values = px.modality_lut(raw, ds, rescales[0])
    else:
        values = np.empty(raw.shape, dtype=np.float32)
        for i, r in enumerate(rescales):
            values[i] = px.modality_lut(raw[i], ds, r)
    if dose is not None:
        values *= np.float32(dose)
    spacing, source = pixel_spacing_of(ds, 0, path)
    tags = common["tags"]
    tags["spacing_source"] = source
    geometry = _frame_geometry(ds, frames)
    stack = values.transpose(2, 1, 0)  # (frames, rows, cols) -> (i=col, j=row, k=frame)
    if geometry is None:
        # No positions: keep the frame order and say so (a warning and a tag, never silent).
        key = "SpacingBetweenSlices" if ds.get("SpacingBetweenSlices") not in (None, "") else "SliceThickness"
        between = px.tag_float(ds, key, 1.0, path, positive=True, limit=MAX_SPACING_MM)
        warnings.warn(f"{path}: multi-frame file has no per-frame geometry; frames kept in "
                      "file order with an assumed axial orientation", stacklevel=3)
        tags["geometry"] = "assumed: no per-frame position/orientation in file"
        affine_lps = stack_affine_lps([1, 0, 0, 0, 1, 0], [0, 0, 0], spacing, [0, 0, between])
    else:
        orients, positions = geometry
        first = orients[0]
        if any(not np.allclose(o, first, atol=1e-4) for o in orients):
            raise ImageReadError("frames have different orientations", path=path,
                                 field="PlaneOrientationSequence", expected="one orientation per volume")
        order = order_slices(first, positions, where=path,
                             names=[f"frame {i + 1}" for i in range(frames)],
                             spacing_tolerance=spacing_tolerance, allow_nonuniform=allow_nonuniform)
        stack = stack[..., order.order]
        if not order.uniform:
            stack, _ = resample_uniform(stack, order.distances, float(np.median(np.diff(order.distances))))
            tags["resampled"] = True
        affine_lps = stack_affine_lps(first, order.positions[0], spacing, order.step)
        tags["geometry"] = "per-frame functional groups" if ds.get("PerFrameFunctionalGroupsSequence") \
            else "grid frame offsets"
    array, affine = to_canonical(stack, affine_lps)
    return MedicalImage(array=array, spacing=voxel_sizes(affine), affine=affine, **common)

"""``read_image``: the one entry point for every image format medvl reads."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from medvl.errors import ImageReadError, MedvlError
from medvl.io.image import MedicalImage

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: default refusal threshold: 2**29 values = 2 GiB of float32
DEFAULT_MAX_VOXELS = 2**29


@dataclass
class ReadOptions:
    """Reader settings (the ``io`` options a data config may carry).

    Attributes:
        max_voxels: refuse images with more values than this, before decoding.
        allow_nonuniform: resample uneven slice gaps instead of raising.
        allow_gaps: a series folder may hold unreadable slices (empty or truncated files):
            they are left out, the gap is resampled, and ``tags["missing_slices"]`` says
            where it is; without it such a file is an error naming it.
        spacing_tolerance: allowed relative deviation of a slice gap from the median.
        nonfinite: NIfTI NaN/inf voxels: ``"zero"`` (replace), ``"keep"`` or ``"error"``.
        recursive: look for series files in sub-folders too.
    """

    max_voxels: int | None = DEFAULT_MAX_VOXELS
    allow_nonuniform: bool = False
    allow_gaps: bool = False
    spacing_tolerance: float = 0.01
    nonfinite: Literal["zero", "keep", "error"] = "zero"
    recursive: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments for :func:`read_image`."""
        return asdict(self)


def _sniff(path: Path) -> str:
    """Guess the format of a file with no telling suffix from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise ImageReadError(f"cannot open file ({exc})", path=path) from None
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "raster"
    if head[344:348] in (b"n+1\x00", b"n+2\x00") or head[4:8] == b"n+2\x00" or head.startswith(b"\x1f\x8b"):
        return "nifti"
    return "dicom"


def image_format(path: str | Path) -> Literal["series", "nifti", "raster", "dicom"]:
    """Which reader :func:`read_image` uses for ``path``."""
    p = Path(path)
    if p.is_dir():
        return "series"
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    if not p.exists():
        return "dicom"
    return _sniff(p)  # type: ignore[return-value]


def read_image(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    frame: int | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    allow_nonuniform: bool = False,
    allow_gaps: bool = False,
    spacing_tolerance: float = 0.01,
    nonfinite: Literal["zero", "keep", "error"] = "zero",
    recursive: bool = False,
    modality: str | None = None,
) -> MedicalImage:
    """Read a DICOM file, a DICOM series folder, a NIfTI file or a PNG/JPEG picture.

    The array is float32 in physical units (modality LUT applied: HU for CT). A 2D
    image is ``(rows, cols)``; a volume is ``(x, y, z)`` in RAS+ with ``affine``, as
    ``nibabel.as_closest_canonical`` gives. No display window is applied; use
    :func:`medvl.io.to_display` or the steps in :mod:`medvl.io.intensity`.

    Args:
        path: file or directory.
        series_uid: series to read from a folder holding several.
        frame: one frame of a multi-frame DICOM or one volume of a 4D NIfTI.
        max_voxels: refuse images with more values than this (None: no limit).
        allow_nonuniform: resample uneven slice spacing instead of raising.
        allow_gaps: series folders only: leave out slices that cannot be read (empty or
            truncated files) instead of raising; the volume is resampled over the gap and
            ``tags["missing_slices"]`` / ``tags["unreadable_slices"]`` say what is missing.
        spacing_tolerance: allowed relative deviation of slice gaps.
        nonfinite: NIfTI only: NaN/inf voxels become 0 (``"zero"``), stay (``"keep"``)
            or raise (``"error"``); an all-NaN volume always raises.
        recursive: series only, include sub-folders.
        modality: for NIfTI/PNG/JPEG, which store none (default ``"OT"``).

    Raises:
        ImageReadError: (or its subclasses ``SeriesError``, ``MissingDecoderError``)
            naming the file and what was wrong.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageReadError("file or directory not found", path=p)
    try:
        return _dispatch(p, series_uid=series_uid, frame=frame, max_voxels=max_voxels,
                         allow_nonuniform=allow_nonuniform, allow_gaps=allow_gaps,
                         spacing_tolerance=spacing_tolerance,
                         nonfinite=nonfinite, recursive=recursive, modality=modality)
    except MedvlError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise ImageReadError("not enough memory to read this image", path=p,
                             expected="a smaller image or a lower max_voxels") from None
    except BaseException as exc:
        # The readers check what they know about; a corrupt file can still trip a
        # library deep inside (a malformed DS value converted lazily, an unknown VR,
        # a panic in a Rust decoder). The contract is one clear error naming the file;
        # the original stays chained for debugging.
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ImageReadError(f"corrupt or unsupported content ({type(exc).__name__}: {text})",
                             path=p) from exc


def _dispatch(p: Path, *, series_uid: str | None, frame: int | None, max_voxels: int | None,
              allow_nonuniform: bool, allow_gaps: bool, spacing_tolerance: float, nonfinite: str,
              recursive: bool, modality: str | None) -> MedicalImage:
    kind = image_format(p)
    if kind == "series":
        from medvl.io.series import read_dicom_series

        return read_dicom_series(p, series_uid=series_uid, max_voxels=max_voxels,
                                 allow_nonuniform=allow_nonuniform, allow_gaps=allow_gaps,
                                 spacing_tolerance=spacing_tolerance, recursive=recursive)
    if kind == "nifti":
        from medvl.io.nifti import read_nifti

        return read_nifti(p, frame=frame, max_voxels=max_voxels, nonfinite=nonfinite,  # type: ignore[arg-type]
                          modality=modality or "OT")
    if kind == "raster":
        from medvl.io.raster import read_raster

        return read_raster(p, max_voxels=max_voxels, modality=modality or "OT")
    from medvl.io.dicom import read_dicom_file

    return read_dicom_file(p, frame=frame, max_voxels=max_voxels, allow_nonuniform=allow_nonuniform,
                           spacing_tolerance=spacing_tolerance)

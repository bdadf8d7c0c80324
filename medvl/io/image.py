"""The typed result of every reader: :class:`MedicalImage`.

A reader returns pixel data in *physical units* (the DICOM modality LUT applied, so
Hounsfield units for CT) together with the geometry needed to place it in the
patient. Display windows are never applied here: they are explicit steps in
:mod:`medvl.io.intensity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VoiLut:
    """A VOI LUT table from a DICOM VOI LUT Sequence item (PS3.3 C.11.2.1.1).

    Attributes:
        first_mapped: the input value mapped to ``data[0]``.
        bits: nominal bits per entry (8 or 10-16); output range is ``0 .. 2**bits - 1``.
        data: the table entries, ``(n_entries,)``.
        explanation: the LUT Explanation text, if any.
    """

    first_mapped: int
    bits: int
    data: np.ndarray
    explanation: str = ""


@dataclass
class MedicalImage:
    """An image read by :func:`medvl.io.read_image`.

    Attributes:
        array: float32 pixel data in physical units. A 2D image is ``(rows, cols)``
            (``(rows, cols, 3)`` for colour); a volume is ``(x, y, z)`` in RAS+ as
            ``nibabel.as_closest_canonical`` would give for the equivalent NIfTI.
        spacing: pixel/voxel size in mm along each spatial array axis.
        affine: 4x4 voxel-to-RAS+ matrix (mm) for volumes, ``None`` for 2D images.
        modality: DICOM modality (``"CT"``, ``"CR"``, ``"MR"``...), ``"OT"`` when unknown.
        photometric_interpretation: ``"MONOCHROME1"``, ``"MONOCHROME2"`` or ``"RGB"``
            (YBR and palette colour are converted to RGB on reading).
        windows: display windows stored in the file as ``(center, width)`` pairs, in
            the same units as ``array``.
        tags: a small set of non-identifying tags (no names, IDs, dates, institution).
        path: the file or directory read.
        voi_function: the file's VOI LUT Function (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``).
        voi_luts: VOI LUT tables stored in the file (take precedence over windows
            for display, as in pydicom's ``apply_voi_lut``).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    modality: str
    photometric_interpretation: str
    windows: list[tuple[float, float]] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    voi_function: str = "LINEAR"
    voi_luts: list[VoiLut] = field(default_factory=list)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions: 2 for a radiograph, 3 for a volume."""
        return 3 if self.affine is not None else 2

    @property
    def is_color(self) -> bool:
        """True for RGB images (array has a trailing axis of 3)."""
        return self.photometric_interpretation == "RGB"

    def __repr__(self) -> str:  # arrays are large; show what identifies the image
        return (
            f"MedicalImage(shape={self.array.shape}, modality={self.modality!r}, "
            f"photometric={self.photometric_interpretation!r}, spacing={self.spacing}, "
            f"path={str(self.path) if self.path else None!r})"
        )

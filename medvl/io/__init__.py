"""medvl.io: read medical images the way a PACS does.

- :func:`read_image` reads a DICOM file, a DICOM series folder, NIfTI or PNG/JPEG into
  a :class:`MedicalImage` (float32 in physical units, spacing, RAS+ affine, windows).
- Display steps are explicit: :func:`apply_window`, :func:`invert_monochrome1`,
  :func:`to_display`, presets from ``window_presets.yaml``; :func:`normalize` for models.
- MONAI transforms (``LoadMedicalImage(d)``, ``Window(d)``, ...) live in
  :mod:`medvl.io.transforms`, imported lazily (MONAI is slow to import).
- :func:`deidentify` (PS3.15 basic profile via dicognito) in :mod:`medvl.io.deid`.
"""

from __future__ import annotations

from typing import Any

from medvl.io.image import MedicalImage, VoiLut
from medvl.io.intensity import (
    apply_voi_lut_table,
    apply_window,
    file_window,
    get_preset,
    invert_monochrome1,
    normalize,
    to_display,
    window_image,
    window_presets,
)
from medvl.io.reader import DEFAULT_MAX_VOXELS, ReadOptions, image_format, read_image

# Imported on first use: MONAI costs seconds to import, dicognito is only for deid.
_LAZY = {
    "LoadMedicalImage": "medvl.io.transforms", "LoadMedicalImaged": "medvl.io.transforms",
    "Window": "medvl.io.transforms", "Windowd": "medvl.io.transforms",
    "ToDisplay": "medvl.io.transforms", "ToDisplayd": "medvl.io.transforms",
    "InvertMonochrome1": "medvl.io.transforms", "InvertMonochrome1d": "medvl.io.transforms",
    "Normalize": "medvl.io.transforms", "Normalized": "medvl.io.transforms",
    "MedvlImageReader": "medvl.io.transforms",
    "deidentify": "medvl.io.deid", "deidentify_dataset": "medvl.io.deid",
    "list_series": "medvl.io.series", "SeriesInfo": "medvl.io.series",
}

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "InvertMonochrome1",
    "InvertMonochrome1d",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "MedicalImage",
    "MedvlImageReader",
    "Normalize",
    "Normalized",
    "ReadOptions",
    "SeriesInfo",
    "ToDisplay",
    "ToDisplayd",
    "VoiLut",
    "Window",
    "Windowd",
    "apply_voi_lut_table",
    "apply_window",
    "deidentify",
    "deidentify_dataset",
    "file_window",
    "get_preset",
    "image_format",
    "invert_monochrome1",
    "list_series",
    "normalize",
    "read_image",
    "to_display",
    "window_image",
    "window_presets",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvl.io' has no attribute {name!r}")

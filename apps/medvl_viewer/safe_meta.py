"""The facts about an image the viewer may show: an allow-list, never a deny-list.

DICOM headers carry PatientName, PatientID, dates, institution and device names. A
deny-list misses the next private tag; an allow-list cannot. The viewer shows only the
modality, the array size, the pixel spacing and the display windows stored in the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The only keys :func:`display_facts` ever returns.
ALLOWED_KEYS = ("Modality", "Size", "Spacing (mm)", "Windows in file")


def _fmt_float(value: float) -> str:
    return f"{float(value):.4g}"


def display_facts(image: Any) -> dict[str, str]:
    """Return the displayable facts of a ``medvl.io`` image, as strings.

    Args:
        image: an object with ``modality``, ``array`` (or ``shape``), ``spacing`` and
            ``windows`` attributes (a ``medvl.io.MedicalImage``); missing ones are skipped.

    Returns:
        An ordered dict whose keys are a subset of :data:`ALLOWED_KEYS`. Nothing from
        ``image.tags`` or the file's header beyond these is ever included.
    """
    facts: dict[str, str] = {}
    modality = getattr(image, "modality", None)
    if modality:
        facts["Modality"] = str(modality)
    array = getattr(image, "array", None)
    shape: Sequence[int] | None = getattr(array, "shape", None) or getattr(image, "shape", None)
    if shape:
        facts["Size"] = " x ".join(str(int(s)) for s in shape)
    spacing = getattr(image, "spacing", None)
    if spacing is not None and len(spacing):
        facts["Spacing (mm)"] = " x ".join(_fmt_float(s) for s in spacing)
    windows = getattr(image, "windows", None) or []
    if windows:
        facts["Windows in file"] = ", ".join(f"C {_fmt_float(c)} / W {_fmt_float(w)}" for c, w in windows)
    return facts

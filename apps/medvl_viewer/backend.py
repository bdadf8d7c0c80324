"""The viewer's one doorway into the medvl library.

The viewer holds no model, index or metric code: every search, embedding, zero-shot
score and heatmap is a call into ``medvl.models``, ``medvl.index``, ``medvl.eval`` and
``medvl.io``. This module adapts those calls to the small :class:`ViewerBackend`
surface the UI needs, so the UI can be driven in tests by a fake with the same surface.

:func:`open_backend` is what the Streamlit app caches with ``st.cache_resource``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medvl.errors import CaseIndexError, ModelError


@dataclass
class Case:
    """One case as the viewer shows it: a query from the index or a ranked hit.

    Attributes:
        study_id: the study's id in the index (pseudonymous; never a patient id).
        report: the report text stored in the index.
        image_path: the case's image (file or DICOM series folder), if on disk.
        labels: finding -> 1 / 0 / -1, as in the manifest.
        score: similarity to the query (hits only).
        modality: the manifest's modality (a NIfTI file itself records none).
    """

    study_id: str
    report: str = ""
    image_path: Path | None = None
    labels: dict[str, int] = field(default_factory=dict)
    score: float | None = None
    modality: str | None = None


@dataclass
class Query:
    """What the user searched with: text, or an image (an uploaded or indexed file)."""

    text: str | None = None
    image_path: Path | None = None


class ViewerBackend(Protocol):
    """What the viewer needs from the library."""

    def case_ids(self) -> list[str]:
        """Study ids in the index, in index order."""

    def case(self, study_id: str) -> Case:
        """The stored case ``study_id``."""

    def search_text(self, text: str, k: int, against: str = "image") -> list[Case]:
        """The ``k`` cases whose images (``against="image"``) or reports best match ``text``."""

    def search_image(self, image_path: Path, k: int) -> list[Case]:
        """The ``k`` cases most similar to the image at ``image_path``, best first."""

    def read_image(self, image_path: Path) -> Any:
        """The image as a ``medvl.io.MedicalImage`` (physical units, spacing, windows)."""

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        """Named display windows ``(center, width)`` for ``modality``."""

    def zero_shot(self, image_path: Path, modality: str | None = None) -> dict[str, float] | None:
        """Finding -> probability for the image, or None when no prompt set fits its modality.

        ``modality`` overrides the file's (NIfTI records none).
        """

    def heatmap(self, image_path: Path, phrase: str) -> np.ndarray | None:
        """Relevance of the image's regions to ``phrase``, in [0, 1] over the whole image.

        ``(h, w)`` for a 2D image, ``(d, h, w)`` over a volume's axial slices (radiological
        layout, see ``render.display_plane``), covering the image only (no padding).
        """

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        """Similarity of each sentence to the query (for highlighting), or None."""


#: Modality codes that say "unknown" (NIfTI files, secondary captures).
UNKNOWN_MODALITIES = ("", "OT", "NONE")


def effective_modality(image: Any, fallback: str | None = None) -> str | None:
    """The image's modality, or ``fallback`` when the file records none (``OT`` for NIfTI)."""
    own = str(getattr(image, "modality", "") or "").upper()
    if own not in UNKNOWN_MODALITIES:
        return own
    return fallback.upper() if fallback else (own or None)


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """First present attribute or key among ``names`` (hits may be dataclasses or dicts)."""
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


def _report_text(report: Any) -> str:
    """A report stored as text or as sections ``{findings, impression, ...}``, as text."""
    if report is None:
        return ""
    if isinstance(report, str):
        return report
    if isinstance(report, dict):
        parts = []
        for key, value in report.items():
            if value:
                parts.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        return "\n".join(parts)
    return str(report)


def to_case(hit: Any) -> Case:
    """Convert a ``medvl.index`` hit (dataclass or dict) into a :class:`Case`."""
    image = _get(hit, "image_path", "image", "path")
    score = _get(hit, "score", "similarity")
    return Case(
        study_id=str(_get(hit, "study_id", "id")),
        report=_report_text(_get(hit, "report_text", "report", "text")),
        image_path=Path(image) if image else None,
        labels=dict(_get(hit, "labels", default={}) or {}),
        score=None if score is None else float(score),
        modality=_get(hit, "modality"),
    )


def open_backend(index_dir: str | Path, model_dir: str | Path | None = None) -> ViewerBackend:
    """Load the model and open the index once; the viewer caches the result.

    Args:
        index_dir: a folder written by ``medvl index``.
        model_dir: the model folder; ``None`` uses the model folder the index records
            (the one it was built with).

    Raises:
        CaseIndexError: if ``index_dir`` is missing or not a medvl index.
        ModelError: if ``model_dir`` is missing, or not given and not recorded in the index.
    """
    from medvl_viewer.library import LibraryBackend

    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise CaseIndexError("index folder does not exist", path=index_dir, expected="a folder from `medvl index`")
    if model_dir is None or str(model_dir) == "":
        model_dir = recorded_model_dir(index_dir)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError("model folder does not exist", path=model_dir, expected="a folder from `medvl train`")
    return LibraryBackend(index_dir, model_dir)


def recorded_model_dir(index_dir: Path) -> Path:
    """The model folder an index records it was built with.

    Raises:
        ModelError: the index does not record one.
    """
    from medvl.index import CaseIndex

    index = CaseIndex.open(index_dir)
    try:
        recorded = (index.info.get("model") or {}).get("dir")
    finally:
        index.close()
    if not recorded:
        raise ModelError(
            "no model given and the index does not record the model it was built with",
            path=index_dir,
            field="--model",
            expected="--model DIR",
        )
    return Path(recorded)

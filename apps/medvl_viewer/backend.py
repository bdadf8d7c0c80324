"""The viewer's doorway into the medvl library: the surfaces the UI uses, and how to open them.

The viewer holds no model, index or metric code. Two objects adapt the library to what
the page needs, so the UI can be driven in tests by fakes with the same surfaces:

* :class:`Catalogue` (light: the index's metadata and medvl.io, no torch) lists and
  finds cases and reads images for display. The page draws its first image with it
  while the model is still loading.
* :class:`ViewerBackend` (heavy: the model through ``medvl.load``) searches, scores,
  checks inputs and draws heatmaps.

:func:`open_catalogue` and :func:`open_backend` are what the Streamlit app caches with
``st.cache_resource``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

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
        score: cosine similarity to the query (hits only).
        relative: where ``score`` stands among the index's own best matches, as a
            percentile 0-100 (hits only; see :attr:`SearchResult.reference`).
        modality: modality recorded in the index (e.g. ``CT``), if any.
        view: the view recorded in the index (``PA``, ``AP``...), if any.
        agreement: for a text query, how the case's report relates to the query
            (``agrees`` / ``contradicts`` / ``silent``, see ``medvl.data.assertions``).
    """

    study_id: str
    report: str = ""
    image_path: Path | None = None
    labels: dict[str, int] = field(default_factory=dict)
    score: float | None = None
    relative: float | None = None
    modality: str | None = None
    view: str | None = None
    agreement: str | None = None


@dataclass
class Query:
    """What the user searched with: text, or an image (an uploaded or indexed file)."""

    text: str | None = None
    image_path: Path | None = None
    study_id: str | None = None  # an indexed case used as the query


@dataclass
class SearchResult:
    """Ranked cases and what the page must say about them.

    Attributes:
        hits: best first.
        warnings: plain sentences on why the results may not mean much (an input
            unlike the index: modality, body part, dimensions, embedding distance,
            nonsense text); shown above the results. Empty when nothing is wrong.
        reference: how :attr:`Case.relative` was computed, in one sentence.
        reranked: the order uses the reports' statements (side, negation), not only
            the embedding similarity.
    """

    hits: list[Case]
    warnings: list[str] = field(default_factory=list)
    reference: str = ""
    reranked: bool = False


@dataclass
class FindingScores:
    """Per-finding scores of one image, in the forms the model can back. Never a raw softmax.

    Attributes:
        percentiles: finding -> the percentile 0-100 of the image's zero-shot score among
            the indexed cases' (how it ranks in this index; needs no calibration).
        probabilities: finding -> a calibrated probability in [0, 1], for the findings the
            model directory's calibration covers (empty without calibration).
        note: one sentence saying what the numbers are and are not.
    """

    percentiles: dict[str, float]
    probabilities: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Heatmap:
    """A phrase heatmap over the image, or why there is none.

    Attributes:
        array: relevance in [0, 1] over the image region only (no padding): ``(h, w)``
            for a radiograph in stored orientation, ``(d, h, w)`` for a volume in the
            display layout ``(z, -y, -x)`` of ``render.display_plane``; ``None`` when no
            map is available.
        method: ``"local"`` (patch-token similarity, for models trained with local
            alignment), ``"cam"`` (the global head's class-activation-style map) or ``None``.
        reason: a plain sentence on the method or on why no map is shown.
    """

    array: np.ndarray | None
    method: Literal["local", "cam"] | None
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What the page says about the model next to its results.

    Attributes:
        name: the model's name (an imported model's own name; else ``"trained with medvl"``).
        source: where an imported model came from (hub name or format), or ``""``.
        licence: an imported model's licence, or ``""``.
        calibrated: finding scores are calibrated probabilities.
    """

    name: str
    source: str = ""
    licence: str = ""
    calibrated: bool = False


@dataclass(frozen=True)
class CaseSummary:
    """One row of the case list (no report text: the list covers the whole index)."""

    study_id: str
    modality: str | None
    view: str | None
    positives: tuple[str, ...]  # finding keys labelled 1


class Catalogue(Protocol):
    """The index's cases and images, without the model (cheap to open)."""

    def size(self) -> int:
        """Number of indexed cases."""

    def modalities(self) -> dict[str, int]:
        """Cases per modality code (``{"DX": 900, "CT": 24}``)."""

    def dims(self) -> int:
        """2 for an index of radiographs, 3 for one of volumes."""

    def find(self, text: str, page: int, per_page: int) -> tuple[list[CaseSummary], int]:
        """Cases whose study id, or whose positive findings, match ``text`` (all if empty).

        Returns:
            ``(rows of the 0-based page, total number of matches)``.
        """

    def case(self, study_id: str) -> Case:
        """The stored case ``study_id``."""

    def read_image(self, image_path: Path, frame: int | None = None) -> Any:
        """The image as a ``medvl.io.MedicalImage`` (physical units, spacing, windows)."""

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        """Named display windows ``(center, width)`` for ``modality``."""


class ViewerBackend(Protocol):
    """What the viewer needs from the model."""

    def model_info(self) -> ModelInfo:
        """Name, source and licence of the model, and whether its scores are calibrated."""

    def search_text(self, text: str, k: int, against: str = "image", *, use_reports: bool = True) -> SearchResult:
        """The ``k`` cases whose images (``against="image"``) or reports best match ``text``.

        With ``use_reports``, cases whose report states the query's findings (same side,
        not denied) come first, then those that do not mention them, then those whose
        report contradicts the query.
        """

    def search_image(self, image_path: Path, k: int, *, modality: str | None = None,
                     exclude: str | None = None, frame: int | None = None) -> SearchResult:
        """The ``k`` cases most similar to the image at ``image_path``, best first.

        ``exclude`` drops a study id (a case is not its own neighbour); ``modality``
        stands in for a file that records none (NIfTI).
        """

    def finding_scores(self, image_path: Path, modality: str | None = None,
                       frame: int | None = None) -> FindingScores | None:
        """Finding scores of an image, or None when no prompt set fits its modality."""

    def heatmap(self, image_path: Path, phrase: str, frame: int | None = None) -> Heatmap:
        """Where in the image ``phrase`` is, as the model sees it (see :class:`Heatmap`)."""

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        """Similarity of each sentence to the query (to rank highlights when the
        query names no finding), or None."""


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
        return "\n".join(f"{key.upper()}: {value}" for key, value in report.items() if value)
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
        view=_get(hit, "view"),
    )


def open_catalogue(index_dir: str | Path) -> Catalogue:
    """Open the index's metadata for listing cases and showing images (no model, no torch).

    Raises:
        CaseIndexError: ``index_dir`` is missing or not a medvl index.
    """
    from medvl_viewer.catalogue import IndexCatalogue

    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise CaseIndexError("index folder does not exist", path=index_dir, expected="a folder from `medvl index`")
    return IndexCatalogue(index_dir)


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

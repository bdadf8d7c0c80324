"""Export one image's zero-shot findings and similar cases as a DICOM SR, and store it when asked.

The one path both ``medvl pacs sr`` and the viewer's PACS mode take: score the image
with the public inference API (``medvl.load(dir).classify``), search the case index,
build the SR (:func:`medvl.pacs.sr.findings_sr`), write it atomically, and only when
``store_to`` is given, send it with STOW-RS.

An image the model's out-of-distribution guard flags (``classify(...).ood``: a modality,
body part or appearance unlike its training data) is refused: scores on it mean little
and an SR would carry them into the patient's record. ``allow_ood=True`` (``--allow-ood``)
exports anyway; the SR then says, in every finding group, that the input is outside the
model's training distribution and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvl.errors import MedvlError
from medvl.pacs.sr import SimilarCase, findings_sr, similar_case_from_path


def image_headers(path: str | Path, limit: int = 2048) -> list[Any]:
    """Pixel-free headers of a DICOM file or of the files of a series folder.

    Raises:
        MedvlError: nothing DICOM at ``path`` (an SR can only refer to DICOM instances).
    """
    import pydicom

    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    heads = []
    for f in files[:limit]:
        try:
            heads.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception:  # noqa: BLE001, S112 - non-DICOM files are not evidence
            continue
    if not heads:
        raise MedvlError("not a DICOM file or series folder: a DICOM SR can refer only to DICOM images",
                         path=p.name)
    return heads


def source_evidence(source: Any, study: Any, modalities: Sequence[str] = ()) -> list[Any]:
    """Headers (WADO-RS metadata, no pixels) of the source series the ingest takes from
    ``study``: the evidence an SR stored back to the server is attached to, so that it files
    with the patient's study there. They carry the patient's identifiers: use them only for
    an SR sent to that server, never for a file or a page.

    Raises:
        PacsError: the server cannot be asked.
    """
    from medvl.pacs.ingest import choose_series

    return list(source.series_headers(study, choose_series(source.series(study), modalities)))


def similar_cases(hits: Sequence[Any]) -> list[SimilarCase]:
    """Index hits (``rank``, ``score``, ``study_id``, ``image_path``) as SR references."""
    out = []
    for h in hits:
        try:
            out.append(similar_case_from_path(h.rank, h.score, h.study_id, h.image_path))
        except (MedvlError, OSError):
            continue  # a NIfTI/PNG case has no DICOM UID to refer to
    return out


class OutOfDistributionError(MedvlError):
    """The model flags the image as outside its training distribution; no SR was written."""


def export_findings_sr(
    pipeline: Any,
    image: str | Path,
    out: str | Path | None,
    *,
    index: Any = None,
    k: int = 5,
    evidence: Sequence[Any] | None = None,
    store_to: Any = None,
    allow_ood: bool = False,
) -> Any:
    """Score ``image``, find similar cases, write the SR to ``out`` (when given); store it when ``store_to`` is set.

    Args:
        pipeline: ``medvl.load(model_dir)`` (``classify``, ``model``, ``model_dir``).
        image: the evaluated DICOM file or series folder.
        out: the SR file to write; None writes none (an SR only stored: one attached to the
            source study's headers carries the patient's identifiers and goes to no file).
        index: a ``CaseIndex`` to search (None: no similar cases).
        k: similar cases to reference.
        evidence: headers the SR is attached to (default: those of ``image``); the
            viewer passes the source study's headers so the SR files with it.
        store_to: a :class:`~medvl.pacs.client.DicomWebSource` to STOW the SR to.
        allow_ood: export an image the model flags as out of distribution (the SR says so).

    Returns:
        the SR dataset.

    Raises:
        OutOfDistributionError: the model flags the image and ``allow_ood`` is False
            (nothing written, nothing stored).
    """
    from medvl.atomic import atomic_path

    result = pipeline.classify(image)
    if bool(getattr(result, "ood", False)) and not allow_ood:
        reason = str(getattr(result, "ood_reason", "") or "the model's guard flags it")
        raise OutOfDistributionError(
            f"the model flags this image as out of distribution ({reason.rstrip('.')}); no SR written",
            path=Path(image).name, expected="an image like the model's training data, or --allow-ood "
            "to export anyway (the SR then says the input is out of distribution)")
    hits = index.search_image(pipeline.model, image, k) if index is not None else []
    name = Path(str(getattr(pipeline, "model_dir", "") or "model")).name
    sr = findings_sr(
        list(evidence) if evidence is not None else image_headers(image), dict(result.scores),
        calibrated=bool(result.calibrated), similar=similar_cases(hits),
        ood=bool(getattr(result, "ood", False)), ood_reason=str(getattr(result, "ood_reason", "") or ""),
        algorithm=f"medvl zero-shot {name}",
    )
    if out is not None:
        with atomic_path(out) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
    if store_to is not None:
        store_to.store([sr])
    return sr

"""Results back as DICOM: zero-shot findings and similar cases as a Comprehensive 3D SR (TID 1500).

:func:`findings_sr` builds, with ``highdicom``, a Measurement Report (TID 1500) about the
evaluated image(s):

* one measurement group (TID 1501) per finding: the score as a unitless numeric
  measurement whose *name says what it is*: "Calibrated probability" only when the model
  directory's calibration covers it (``classify(...).calibrated``), "Uncalibrated
  zero-shot score (not a probability)" otherwise;
* one group per retrieved similar case: its similarity score and references to its
  instances by the UIDs *as stored in the index* (the de-identified ones); they enter the
  SR's Pertinent Other Evidence, never the source's UIDs;
* in every group, a qualitative evaluation "Intended use: research use only, not for
  diagnostic use", and an out-of-distribution flag when the model's guard raised one;
* the algorithm (name, version) and the device observer; the document is marked
  preliminary, unverified and partial; the series description says research use only.

The SR belongs to the evaluated study: highdicom copies the patient and study modules
from the evidence. Built from a source study (the viewer's PACS mode) it files with the
patient when stored back (STOW-RS, only when asked); built from de-identified files it
is as de-identified as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.errors import MedvlError

SCHEME = "99MEDVL"  # a private coding scheme ("99" prefix, PS3.16 section 8.2)
RESEARCH_NOTE = "Research use only, not for diagnostic use"
SERIES_DESCRIPTION = "medvl zero-shot findings - RESEARCH USE ONLY"
#: appended to the series description when the model flagged the input (``--allow-ood``)
OOD_SUFFIX = " - OOD INPUT"  # 64 characters at most in all (LO)


@dataclass
class SimilarCase:
    """A retrieved case, referenced by the de-identified UIDs stored with it.

    Attributes:
        rank: 1 = most similar.
        score: cosine similarity to the query.
        study_id: the index's study id (the de-identified StudyInstanceUID for PACS ingests).
        instances: ``(SOPClassUID, SOPInstanceUID)`` of its images.
        headers: the instances' headers (pixel-free datasets) used as SR evidence.
    """

    rank: int
    score: float
    study_id: str
    instances: list[tuple[str, str]] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list, repr=False)


def similar_case_from_path(rank: int, score: float, study_id: str, image_path: str | Path,
                           max_instances: int = 64) -> SimilarCase:
    """Read a hit's DICOM file or series folder headers (no pixels) into a :class:`SimilarCase`.

    Raises:
        MedvlError: the hit's image is not DICOM (a NIfTI or PNG case cannot be referenced).
    """
    import pydicom

    p = Path(image_path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    heads = []
    for f in files[:max_instances]:
        try:
            heads.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception:  # noqa: BLE001, S112 - reported below when nothing is DICOM
            continue
    if not heads:
        raise MedvlError("similar case has no DICOM image to reference", field=study_id,
                         expected="cases ingested as DICOM (medvl prepare dicomweb)")
    return SimilarCase(rank, float(score), study_id,
                       [(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in heads], heads)


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value, SCHEME, meaning)


def _finding_name(finding: str) -> str:
    return finding.replace("_", " ").capitalize()


def findings_sr(
    evidence: Sequence[Any],
    scores: Mapping[str, float],
    *,
    calibrated: bool,
    similar: Sequence[SimilarCase] = (),
    ood: bool = False,
    ood_reason: str = "",
    algorithm: str = "medvl zero-shot",
    version: str = "",
    series_number: int = 9901,
) -> Any:
    """Build the SR (a ``highdicom.sr.Comprehensive3DSR`` dataset).

    Args:
        evidence: headers of the evaluated image's instances (pixel-free datasets are fine).
        scores: finding -> score, as ``medvl.load(dir).classify(image).scores``.
        calibrated: ``classify(...).calibrated``: True only when every score is a
            calibrated probability.
        similar: the retrieved cases.
        ood, ood_reason: the out-of-distribution guard's answer for the image.
        algorithm, version: what produced the scores (the model directory's name).
        series_number: series number of the new SR series.

    Raises:
        MedvlError: no evidence, or a score outside [0, 1] labelled as a probability.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    if not evidence:
        raise MedvlError("no evaluated image to attach the SR to", field="evidence")
    if calibrated and any(not 0.0 <= float(v) <= 1.0 for v in scores.values()):
        raise MedvlError("a calibrated probability outside [0, 1]", field="scores")
    from medvl import __version__

    algo = AlgorithmIdentification(name=f"{algorithm} ({RESEARCH_NOTE.lower()})"[:64],
                                   version=version or __version__)
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    score_name = (_code("calibrated-probability", "Calibrated probability") if calibrated
                  else _code("zeroshot-score", "Uncalibrated zero-shot score (not a probability)"))
    intended = QualitativeEvaluation(_code("intended-use", "Intended use"), _code("ruo", RESEARCH_NOTE))
    source = [SourceImageForMeasurementGroup.from_source_image(e) for e in evidence]
    extra = [intended]
    if ood:
        extra.append(QualitativeEvaluation(
            _code("ood", "Input outside the model's training distribution"),
            _code("ood-yes", (ood_reason or "yes")[:64])))
    groups = []
    for finding, value in scores.items():
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"zero-shot {finding}"[:64]),
            finding_type=_code(f"finding-{finding}"[:16], _finding_name(finding)),
            algorithm_id=algo,
            measurements=[Measurement(name=score_name, value=float(value), unit=unit, algorithm_id=algo)],
            qualitative_evaluations=extra, source_images=source))
    similar_name = _code("similarity", "Similarity to the evaluated image (cosine)")
    for case in similar:
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"similar case {case.rank}"),
            finding_type=_code("similar-case", "Similar case retrieved from the case index"),
            algorithm_id=algo,
            measurements=[Measurement(name=similar_name, value=float(case.score), unit=unit)],
            qualitative_evaluations=extra,
            source_images=[SourceImageForMeasurementGroup(c, i) for c, i in case.instances]))
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medvl", manufacturer_name="medvl (research software)", model_name=algorithm[:64]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=_code("zeroshot-findings", "Zero-shot image findings (research use)"),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    all_evidence = list(evidence) + [h for c in similar for h in c.headers]
    sr = Comprehensive3DSR(
        evidence=all_evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medvl (research software)",
        is_complete=False, is_final=False, is_verified=False,
        series_description=SERIES_DESCRIPTION + (OOD_SUFFIX if ood else ""),
    )
    sr.PreliminaryFlag = "PRELIMINARY"
    return sr


def findings_text(sr: Any) -> list[tuple[str, str, float]]:
    """``(finding, score name, value)`` read back from an SR made by :func:`findings_sr`
    (for checks and for showing what will be stored)."""
    out = []

    def walk(items: Any, finding: str) -> None:
        for item in items:
            name = str(item.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in item else ""
            if name == "Finding" and "ConceptCodeSequence" in item:
                finding = str(item.ConceptCodeSequence[0].CodeMeaning)
            if str(item.get("ValueType", "")) == "NUM":
                out.append((finding, name, float(item.MeasuredValueSequence[0].NumericValue)))
            if "ContentSequence" in item:
                walk(item.ContentSequence, finding)

    walk(sr.ContentSequence, "")
    return out

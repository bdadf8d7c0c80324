"""De-identification of DICOM files: PS3.15 Basic Application Level Confidentiality Profile.

The maintained library `dicognito` does the consistent replacement: every UID is
mapped to a pseudonymous UID (the same original UID always maps to the same new one
within a run, and across runs given the same ``seed``), so series, studies and frames
of reference stay together; names, IDs, institutions and addresses get dummy values.
medvl adds what the basic profile asks and dicognito leaves: free-text descriptions
and comments, patient age/size/weight, private tags and overlay data are removed,
dates are emptied (or shifted, with the PS3.15 "modified dates" option), and files
with burned-in annotation are refused unless the caller accepts them.

What models need is untouched: pixel data, spacing, orientation and position,
rescale, windows and VOI LUTs, modality, body part, view.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

from medvl.errors import ImageReadError, MedvlError

DateMode = Literal["remove", "shift"]

# PS3.15 Table E.1-1 attributes marked X (remove) or Z (empty) that dicognito keeps.
# dicognito already handles every PN, UI, DA/DT/TM element and the IDs/addresses.
REMOVE_KEYWORDS: tuple[str, ...] = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "PatientAge", "PatientSize",
    "PatientWeight", "AdditionalPatientHistory", "PatientComments", "ImageComments",
    "StudyComments", "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "DerivationDescription",
    "AcquisitionComments", "DeviceSerialNumber", "ReasonForStudy", "ReasonForTheRequestedProcedure",
    "RequestAttributesSequence", "EthnicGroup", "MedicalAlerts", "Allergies", "PregnancyStatus",
    "SmokingStatus", "LastMenstrualDate", "PatientState", "SpecialNeeds", "VisitComments",
    "TextComments", "TextString", "InterpretationText", "Impressions", "ResultsComments",
    "PatientBirthName", "PatientMotherBirthName", "PatientBirthTime", "OtherPatientNames",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "InstitutionAddress",
    "InstitutionalDepartmentName", "PerformedLocation", "ScheduledProcedureStepLocation",
    "OperatorsName", "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "PersonName",
    "IssuerOfPatientID", "PatientTelephoneNumbers", "PatientAddress", "CountryOfResidence",
    "RegionOfResidence", "MilitaryRank", "BranchOfService", "Occupation",
    # X in Table E.1-1: other identifiers of the same patient (record numbers of other systems)
    "OtherPatientIDs", "OtherPatientIDsSequence",
)
# Emptied (Z) rather than left with dicognito's realistic dummy values. PatientID keeps
# its pseudonym: corpora need it for patient-level splits.
# Type 2 elements among them must stay present (empty) for the file to remain valid.
EMPTY_KEYWORDS: tuple[str, ...] = ("PatientName", "PatientBirthDate", "PatientSex",
                                   "AccessionNumber", "StudyID", "InstitutionName", "StationName",
                                   "ReferringPhysicianName", "ContentCreatorName")

# Elements that must carry no identifying value after de-identification (used by checks).
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientBirthDate", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StudyDescription",
    "SeriesDescription", "PatientAge", "AccessionNumber", "StationName", "DeviceSerialNumber",
)

# Modalities whose pixels often show patient text (ultrasound, screen captures, photos).
BURNED_IN_PRONE = ("US", "SC", "XC", "ES", "OT", "GM")

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")


@dataclass
class DeidReport:
    """What :func:`deidentify` did.

    Attributes:
        written: output files, relative to the output folder (one per input written).
        skipped: ``{"file": input path, "reason": ...}`` for files not written.
        collisions: ``{"file": input path, "output": ..., "same_uid_as": ...}`` for inputs
            whose SOP Instance UID an earlier input of the run already had (the same
            object in another encoding, or a copy): each is written under its own name,
            ``<uid>-2.dcm``..., and keeps the UID.
        check_pixels: written files of modalities that often carry burned-in text
            (US, SC, XC, ES, OT) whose BurnedInAnnotation is not ``NO``: their pixels
            should be reviewed or cleaned (PS3.15 Clean Pixel Data option).
    """

    written: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    collisions: list[dict[str, str]] = field(default_factory=list)
    check_pixels: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Counts and reasons only: safe to store next to the de-identified files."""
        reasons: dict[str, int] = {}
        for item in self.skipped:
            key = item["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {"written": len(self.written), "skipped": len(self.skipped), "skip_reasons": reasons,
                "same_sop_instance_uid": len(self.collisions),
                "check_pixels_for_burned_in_text": self.check_pixels,
                "profile": "DICOM PS3.15 Basic Application Level Confidentiality Profile (dicognito + medvl)"}


def _make_anonymizer(seed: str | None):
    from dicognito.anonymizer import Anonymizer

    return Anonymizer(seed=seed)


def _remove_overlays(ds: Dataset) -> None:
    """Overlay Data / Comments (60xx,3000 / 60xx,4000) may hold burned-in text (Table E.1-1: X)."""
    for elem in list(ds):
        group, element = elem.tag.group, elem.tag.element
        if 0x6000 <= group <= 0x601E and group % 2 == 0 and element in (0x3000, 0x4000):
            del ds[elem.tag]


def _blank_dates(ds: Dataset) -> None:
    def visit(dataset: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR in ("DA", "DT", "TM"):
            elem.value = ""

    ds.walk(visit)


def _add_method_codes(ds: Dataset, dates: DateMode) -> None:
    codes = [BASIC_PROFILE_CODE] + ([MODIFIED_DATES_CODE] if dates == "shift" else [])
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.DeidentificationMethod = "DICOM PS3.15 Basic Profile (dicognito, medvl)"
    ds.PatientIdentityRemoved = "YES"


def deidentify_dataset(ds: Dataset, anonymizer=None, *, dates: DateMode = "remove") -> Dataset:
    """De-identify a dataset in place and return it.

    Args:
        ds: the dataset (with ``file_meta``).
        anonymizer: a ``dicognito.anonymizer.Anonymizer``; reuse one for every file
            of a study so UIDs map consistently. A new one is made when None.
        dates: ``"remove"`` empties every date/time (basic profile); ``"shift"``
            keeps dicognito's consistent backward shift (modified dates option).
    """
    anonymizer = anonymizer or _make_anonymizer(None)
    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    anonymizer.anonymize(ds)
    ds.remove_private_tags()
    _remove_overlays(ds)

    def strip(dataset: Dataset, elem: pydicom.DataElement) -> None:
        kw = elem.keyword
        if kw in REMOVE_KEYWORDS:
            del dataset[elem.tag]
        elif kw in EMPTY_KEYWORDS:
            elem.value = ""

    ds.walk(strip)
    if dates == "remove":
        _blank_dates(ds)
    _add_method_codes(ds, dates)
    return ds


def residual_identifiers(ds: Dataset, originals: Iterable[str] = ()) -> list[str]:
    """Keywords of identifying elements still holding a value, plus any element whose
    text contains one of ``originals`` (known identifiers of the source)."""
    found = [kw for kw in IDENTIFYING_KEYWORDS if kw in ds and str(ds[kw].value or "").strip()]
    needles = [o for o in originals if o]
    if needles:
        def visit(dataset: Dataset, elem: pydicom.DataElement) -> None:
            if elem.VR in ("OB", "OW", "OF", "OD", "UN", "SQ") or elem.tag == 0x7FE00010:
                return
            text = str(elem.value)
            if any(n in text for n in needles):
                found.append(elem.keyword or str(elem.tag))

        ds.walk(visit)
    return found


NO_SOP_UIDS = "no SOP Class or Instance UID"


def _complete_file_meta(ds: Dataset) -> str | None:
    """Make the file meta a Part 10 file needs agree with the (de-identified) data set.

    Pre-Part 10 inputs lack the meta; damaged ones have empty or missing elements. The
    SOP UIDs come from the data set (after pseudonymisation, so the meta never keeps an
    original UID); a missing transfer syntax is the encoding the file was read in.

    Returns:
        None, or why the object cannot be written as a Part 10 file.
    """
    meta = ds.file_meta
    sop_class, sop_instance = str(ds.get("SOPClassUID") or ""), str(ds.get("SOPInstanceUID") or "")
    if not sop_class or not sop_instance:
        return (f"{NO_SOP_UIDS}: not a storable DICOM object, so no valid Part 10 file can be written "
                "(PS3.10 needs both in the file meta)")
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance)
    if not str(meta.get("TransferSyntaxUID") or ""):
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:
            implicit, little = ds.is_implicit_VR, ds.is_little_endian
        meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                  else pydicom.uid.ExplicitVRLittleEndian if little
                                  else pydicom.uid.ExplicitVRBigEndian)
    return None


def _check_output(src: Path, dst: Path) -> None:
    """Refuse an output that is a file, or that overlaps the input (originals and
    de-identified copies mixed in one tree, and outputs re-read as inputs)."""
    from medvl.errors import ConfigError

    s, d = src.resolve(), dst.resolve()
    for p in (d, *d.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"output {p} exists and is not a folder", path=dst, field="output",
                              expected="a new or existing folder")
    if s.is_dir():
        overlap = d == s or s in d.parents or d in s.parents
    else:  # one file: only its own folder (or one above) would mix copies with the original
        overlap = d == s.parent or d in s.parent.parents
    if overlap:
        raise ConfigError("the output folder overlaps the input folder", path=dst, field="output",
                          expected="a folder outside the input, which does not contain it")


def _iter_inputs(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


def deidentify(
    src: str | Path,
    dst: str | Path,
    *,
    seed: str | None = None,
    dates: DateMode = "remove",
    allow_burned_in: bool = False,
) -> DeidReport:
    """De-identify a DICOM file or a folder tree into ``dst``.

    Output files are named by their new pseudonymous UIDs,
    ``dst/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, since input
    names and folders often carry patient names. A ``deid_report.json`` with counts
    and reasons only (no input paths) is written to ``dst``.

    Args:
        src: a DICOM file or a folder (searched recursively).
        dst: output folder (created).
        seed: secret that makes the pseudonyms reproducible across runs; keep it
            private (anyone with it can re-link pseudonyms to originals).
        dates: ``"remove"`` (basic profile) or ``"shift"`` (modified dates option).
        allow_burned_in: also write files flagged BurnedInAnnotation YES (their
            pixels may show names; the profile requires cleaning them first).

    Raises:
        MedvlError: ``src`` does not exist or holds no DICOM file.
    """
    from medvl.atomic import atomic_path
    from medvl.io.dicom_pixels import open_dicom

    s, d = Path(src), Path(dst)
    if not s.exists():
        raise ImageReadError("input not found", path=s)
    _check_output(s, d)
    anonymizer = _make_anonymizer(seed)
    report = DeidReport()
    taken: dict[str, str] = {}  # output names of this run (lower case: case-insensitive file systems)
    for f in _iter_inputs(s):
        try:
            ds = open_dicom(f)  # also files without the DICM preamble
        except ImageReadError as exc:  # non-DICOM or damaged files are skipped and recorded
            kind = "not DICOM" if exc.message.startswith(("not a DICOM", "file is empty")) else "unreadable"
            report.skipped.append({"file": str(f), "reason": f"{kind}: {exc.message}"})
            continue
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not allow_burned_in:
            report.skipped.append({"file": str(f), "reason": "burned-in annotation: pixels may show identifiers"})
            continue
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":  # DICOMDIR indexes names
            report.skipped.append({"file": str(f), "reason": "DICOMDIR: rebuild it from the output"})
            continue
        try:
            deidentify_dataset(ds, anonymizer, dates=dates)
            refusal = _complete_file_meta(ds)
            if refusal:
                report.skipped.append({"file": str(f), "reason": refusal})
                continue
            folder = Path(str(ds.get("StudyInstanceUID") or "nostudy")) / str(ds.get("SeriesInstanceUID") or "noseries")
            uid = str(ds.SOPInstanceUID)
            rel, n = folder / f"{uid}.dcm", 1
            while str(rel).lower() in taken:
                n += 1
                rel = folder / f"{uid}-{n}.dcm"
            with atomic_path(d / rel) as tmp:
                # a proper Part 10 file (preamble + meta) even when the input had none
                ds.save_as(tmp, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop a corpus
            report.skipped.append({"file": str(f), "reason": f"cannot de-identify: {type(exc).__name__}: {exc}"})
            continue
        if n > 1:
            report.collisions.append({"file": str(f), "output": str(rel), "same_uid_as": taken[str(folder / f"{uid}.dcm").lower()]})
        taken[str(rel).lower()] = str(rel)
        report.written.append(str(rel))
        if str(ds.get("Modality", "")) in BURNED_IN_PRONE and str(ds.get("BurnedInAnnotation", "")).upper() != "NO":
            report.check_pixels.append(str(rel))
    if not report.written and not report.skipped:
        raise MedvlError("no files to de-identify", path=s, expected="a DICOM file or folder")
    d.mkdir(parents=True, exist_ok=True)
    (d / "deid_report.json").write_text(json.dumps(report.summary(), indent=2) + "\n", encoding="utf-8")
    return report


def _check_keywords() -> None:
    """Raise when a keyword in the tables above is not a DICOM keyword (guards typos)."""
    unknown = [k for k in (*REMOVE_KEYWORDS, *EMPTY_KEYWORDS, *IDENTIFYING_KEYWORDS) if k not in keyword_dict]
    if unknown:
        raise AssertionError(f"unknown DICOM keywords: {unknown}")

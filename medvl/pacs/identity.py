"""Naming studies without identifying them, and scrubbing free text from a PACS.

Source UIDs, accession numbers and patient ids never leave the process: messages,
pages and the ingest cache name a study by a *keyed* hash of its StudyInstanceUID
(:func:`study_ref`), and the cache keys instances by a keyed hash of their SOP Instance
UID (:func:`keyed`). Without the secret, a hash cannot be linked back to a UID by
hashing candidate UIDs (UIDs are guessable: many embed dates and device roots).

Free text from the PACS (report text in an SR, study descriptions shown in the viewer)
may quote the patient's name or ids: :func:`scrub_text` removes every identifier the
server itself sent for the study. It cannot find identifiers the server did not send
(a relative's name typed into a report); ``docs/pacs.md`` says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SECRET_ENV = "MEDVL_PACS_SECRET"
SECRET_FILE = "secret"
#: What replaces an identifier found in free text (MIMIC-CXR's convention).
REDACTED = "___"
#: Identifier values shorter than this are not searched for in text: a patient id "12"
#: would blank every "12 mm"; such short values are not identifying on their own.
MIN_NEEDLE = 4
#: Parts of person names are searched from two letters on ("Ng", "Li"), as whole words.
MIN_NAME_PART = 2
PERSON_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                   "ReferringPhysicianName")


def load_secret(state_dir: str | Path | None, env: Mapping[str, str] | None = None) -> bytes:
    """The secret that keys hashes and de-identification pseudonyms.

    ``$MEDVL_PACS_SECRET`` when set; else ``state_dir/secret``, created (random, mode
    0600) on first use so a rerun maps every UID to the same pseudonym and resumes.
    Anyone holding it *and* the source UIDs can re-link pseudonyms: keep the state
    folder with whoever ran the ingest, never ship it with the data.

    Args:
        state_dir: folder for the secret file; ``None`` gives a fresh per-process secret.
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    if env.get(SECRET_ENV):
        return env[SECRET_ENV].encode()
    if state_dir is None:
        return secrets.token_bytes(32)
    path = Path(state_dir) / SECRET_FILE
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


def keyed(secret: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` under ``secret``, hex."""
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def study_ref(secret: bytes, study_uid: str) -> str:
    """A short, stable, non-identifying name of a study for messages and pages: ``s-1a2b3c4d5e``."""
    return "s-" + keyed(secret, "study:" + study_uid)[:10]


def deid_seed(secret: bytes) -> str:
    """The ``dicognito`` seed derived from the secret (same secret -> same pseudonyms)."""
    return keyed(secret, "dicognito-seed")


def _values(attrs: Mapping[str, Any], keyword: str) -> list[str]:
    value = attrs.get(keyword)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "AccessionNumber",
                       "PatientBirthDate", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
                       "IssuerOfPatientID", "InstitutionName", "StudyID")


PATIENT_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "AccessionNumber",
                    "PatientBirthDate", "PatientBirthName", "PatientMotherBirthName")


def identifiers(attrs: Mapping[str, Any], *, patient_only: bool = False) -> list[str]:
    """The identifying strings among ``attrs`` (keyword -> value), split into the pieces
    text may quote: a person name ``DOE^JOHN`` gives ``DOE`` and ``JOHN``; a birth date
    ``19580214`` also its usual written forms. Longest first.

    ``patient_only`` leaves out the institution and the referring physician: a check of
    whole DICOM elements would otherwise flag a manufacturer "TOSHIBA_MEC" for an
    institution "TOSHIBA" (those elements are emptied by the profile anyway).
    """
    out: set[str] = set()
    for kw in PATIENT_KEYWORDS if patient_only else IDENTIFIER_KEYWORDS:
        for value in _values(attrs, kw):
            value = value.strip()
            if len(value) >= MIN_NEEDLE:
                out.add(value)
            if kw in PERSON_KEYWORDS:
                out.update(p for p in re.split(r"[\^=\s,.]+", value) if len(p) >= MIN_NAME_PART)
            if kw == "PatientBirthDate" and re.fullmatch(r"\d{8}", value):
                y, m, d = value[:4], value[4:6], value[6:]
                out.update({f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}"})
    return sorted(out, key=len, reverse=True)


def long_needles(needles: Iterable[str]) -> list[str]:
    """The needles safe to search for as plain substrings (in DICOM elements): no short name parts."""
    return [n for n in needles if len(n) >= MIN_NEEDLE]


def scrub_text(text: str, needles: Iterable[str]) -> str:
    """Replace each identifier in ``needles`` (case-insensitive, as a whole word) by ``___``."""
    for needle in needles:
        if needle:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(needle) + r"(?![A-Za-z0-9])", REDACTED, text,
                          flags=re.IGNORECASE)
    return text


def dataset_attrs(ds: Any) -> dict[str, Any]:
    """Identifying attributes of a pydicom dataset as keyword -> value (for :func:`identifiers`)."""
    out: dict[str, Any] = {}
    for kw in IDENTIFIER_KEYWORDS:
        if kw in ds:
            value = ds[kw].value
            if value is None:
                continue
            out[kw] = [str(v) for v in value] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
                else str(value)
    return out

"""A DICOMweb server as a source of studies (QIDO-RS, WADO-RS) and a sink of results (STOW-RS).

:class:`DicomWebSource` wraps ``dicomweb_client.DICOMwebClient`` with what a hospital
deployment needs and the library leaves to the caller: credentials that are never
printed, TLS verification on by default, a timeout and bounded retries on every call,
and errors turned into one :class:`~medvl.errors.PacsError` line that names the study by
its keyed hash (:func:`medvl.pacs.identity.study_ref`), never by a patient attribute.

Search results (:class:`StudyInfo`) carry no patient name or id. The source UIDs and the
accession number they hold are needed to fetch and to join reports; they are excluded
from ``repr`` and never written anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from medvl.errors import ConfigError, PacsError
from medvl.pacs.config import PacsConfig, Secret
from medvl.pacs.identity import identifiers, scrub_text, study_ref

T = TypeVar("T")

# Tags asked for in study searches (besides the QIDO defaults).
STUDY_FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances")
SERIES_FIELDS = ("Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances")
# Ask for the stored transfer syntax: the default (explicit VR little endian) would make
# the server decompress every JPEG/JPEG 2000 image, slower and sometimes refused.
ORIGINAL_SYNTAX = (("application/dicom", "*"),)


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else None


def _all(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value") or [])


def _person(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("Alphabetic", ""))
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_date(text: str | None, what: str) -> str | None:
    """``2024-01-31`` or ``20240131`` -> ``20240131``; ``None``/empty -> ``None``.

    Raises:
        ConfigError: not a calendar date.
    """
    if not text:
        return None
    t = text.strip().replace("-", "")
    try:
        date(int(t[:4]), int(t[4:6]), int(t[6:8]))
        if len(t) != 8:
            raise ValueError
    except ValueError:
        raise ConfigError(f"not a date: {text!r}", field=what, expected="YYYY-MM-DD") from None
    return t


@dataclass(frozen=True)
class StudyInfo:
    """One study as a search returns it: nothing that names the patient.

    Attributes:
        ref: keyed short hash of the StudyInstanceUID, for messages and pages.
        date: StudyDate ``YYYYMMDD`` ('' when the server has none).
        modalities: ModalitiesInStudy.
        description: StudyDescription with the study's own identifiers scrubbed.
        n_series, n_instances: counts the server reports (None when it does not).
        uid: the source StudyInstanceUID (to fetch; never shown or written).
        accession: the AccessionNumber (to join a reports CSV; never shown or written).
        needles: identifying strings the server sent for this study, used to scrub
            free text of the same study (never shown or written).
        patient_needles: those naming the patient (checked for in de-identified files).
    """

    ref: str
    date: str
    modalities: tuple[str, ...]
    description: str
    n_series: int | None
    n_instances: int | None
    uid: str = field(repr=False)
    accession: str = field(default="", repr=False)
    needles: tuple[str, ...] = field(default=(), repr=False)
    patient_needles: tuple[str, ...] = field(default=(), repr=False)

    def display(self) -> dict[str, Any]:
        """The fields a page or a listing may show."""
        d = self.date
        return {"ref": self.ref, "date": f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 else "",
                "modalities": ",".join(self.modalities), "description": self.description,
                "series": self.n_series, "instances": self.n_instances}


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study (QIDO-RS series level)."""

    uid: str = field(repr=False)
    modality: str
    number: int | None
    n_instances: int | None


class _Bearer:
    """``requests`` auth adding ``Authorization: Bearer``; keeps the token out of reprs."""

    def __init__(self, token: Any) -> None:
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = "Bearer " + self._token.reveal()
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _session(cfg: PacsConfig) -> Any:
    import requests

    s = requests.Session()
    s.verify = cfg.ca_bundle or cfg.verify
    s.trust_env = False  # no proxy or netrc from the environment: credentials go only where configured
    if cfg.auth == "basic":
        # PacsConfig checks both are given and wraps the password in a Secret
        assert cfg.username is not None and isinstance(cfg.password, Secret)
        s.auth = (cfg.username, cfg.password.reveal())
    elif cfg.auth == "bearer":
        s.auth = _Bearer(cfg.token)
    s.headers["User-Agent"] = "medvl-dicomweb"
    return s


class DicomWebSource:
    """Query, fetch from and store to a DICOMweb server.

    Args:
        config: server settings (:func:`medvl.pacs.config.load_pacs_config`).
        secret: key of the study references (:func:`medvl.pacs.identity.load_secret`);
            a fresh random one when ``None`` (references then hold for this object only).

    Example:
        >>> src = DicomWebSource(load_pacs_config(url="http://127.0.0.1:8042/dicom-web"))
        >>> [s.display() for s in src.search_studies(modalities=["CR"], since="2024-01-01")]
    """

    def __init__(self, config: PacsConfig, secret: bytes | None = None) -> None:
        from dicomweb_client import DICOMwebClient

        from medvl.pacs.identity import load_secret

        self.config = config.check()
        self.secret = secret if secret is not None else load_secret(None)
        self._local = threading.local()
        self._client_cls = DICOMwebClient
        self.requests = 0
        self._count_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """A ``DICOMwebClient`` for the calling thread (``requests`` sessions are not thread-safe)."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._client_cls(self.config.url, session=_session(self.config), timeout=self.config.timeout)
            c.set_http_retry_params(retry=self.config.retries > 0, max_attempts=self.config.retries + 1,
                                    wait_exponential_multiplier=200)
            self._local.client = c
        return c

    def ref(self, study_uid: str) -> str:
        """The keyed short reference of a study."""
        return study_ref(self.secret, study_uid)

    def call(self, what: str, fn: Callable[[], T], *, ref: str | None = None, missing_ok: bool = False,
             count: bool = True) -> T:
        """Run one request, turning every failure into a one-line :class:`PacsError`.

        Args:
            what: what was asked, for the message ("list series").
            fn: the request.
            ref: the study reference to name in the message.
            missing_ok: a 404 returns ``[]`` instead of raising.
            count: count it in :attr:`requests` (False for reading more of an answer).
        """
        import requests

        if count:
            with self._count_lock:
                self.requests += 1
        who = f"study {ref}: " if ref else ""
        server = self.config.display_url
        try:
            return fn()
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 404 and missing_ok:
                return []  # type: ignore[return-value]
            raise PacsError(who + _status_message(code, what), path=server) from None
        except requests.exceptions.SSLError:
            raise PacsError(who + f"TLS verification failed ({what}); give the hospital CA with ca_bundle "
                            "or MEDVL_PACS_CA_BUNDLE", path=server) from None
        except requests.exceptions.Timeout:
            raise PacsError(who + f"the server did not answer within {self.config.timeout:g} s ({what}; timeout)",
                            path=server) from None
        except requests.exceptions.ConnectionError:
            raise PacsError(who + f"cannot reach the server ({what}; connection refused or dropped)",
                            path=server) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(who + f"request failed ({what}; {type(exc).__name__})", path=server) from None

    # -- QIDO-RS ----------------------------------------------------------------------

    def search_studies(
        self,
        *,
        modalities: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
        description: str | None = None,
        limit: int | None = None,
    ) -> list[StudyInfo]:
        """Studies matching the filters, oldest first (QIDO-RS, paged).

        Args:
            modalities: keep studies holding any of these modalities (``CR``, ``DX``, ``CT``...).
            since, until: StudyDate range, inclusive (``YYYY-MM-DD``).
            description: case-insensitive part of the study description (matched here,
                since servers differ in wildcard and case rules).
            limit: at most this many studies.

        Raises:
            PacsError: server down, refused credentials, timeout.
            ConfigError: a malformed date.
        """
        lo, hi = parse_date(since, "since"), parse_date(until, "until")
        if lo and hi and lo > hi:
            raise ConfigError(f"since {since} is after until {until}", field="since")
        base: dict[str, Any] = {}
        if lo or hi:
            base["StudyDate"] = f"{lo or ''}-{hi or ''}"
        found: dict[str, StudyInfo] = {}
        wanted: list[str | None] = [m.strip().upper() for m in modalities if m.strip()] or [None]
        for modality in wanted:
            filters = dict(base, **({"ModalitiesInStudy": modality} if modality else {}))
            offset = 0
            while True:
                def search(f: dict[str, Any] = filters, o: int = offset) -> list[dict[str, Any]]:
                    return self.client.search_for_studies(
                        search_filters=f, fields=STUDY_FIELDS, limit=self.config.page_size, offset=o)

                page = self.call("search studies", search)
                for item in page:
                    info = self._study_info(item)
                    if info is not None:
                        found.setdefault(info.uid, info)
                if len(page) < self.config.page_size:
                    break
                offset += len(page)
        studies = sorted(found.values(), key=lambda s: (s.date, s.ref))
        if description:
            part = description.strip().lower()
            studies = [s for s in studies if part in s.description.lower()]
        return studies[:limit] if limit else studies

    def _study_info(self, item: dict[str, Any]) -> StudyInfo | None:
        uid = _first(item, "0020000D")
        if not uid:
            return None
        attrs = {"PatientName": _person(_first(item, "00100010")), "PatientID": _first(item, "00100020"),
                 "AccessionNumber": _first(item, "00080050"), "PatientBirthDate": _first(item, "00100030"),
                 "ReferringPhysicianName": _person(_first(item, "00080090")), "StudyID": _first(item, "00200010"),
                 "OtherPatientIDs": _all(item, "00101000")}
        needles = tuple(identifiers(attrs))
        return StudyInfo(
            ref=self.ref(str(uid)), date=str(_first(item, "00080020") or ""),
            modalities=tuple(str(m) for m in _all(item, "00080061")),
            description=scrub_text(str(_first(item, "00081030") or ""), needles),
            n_series=_int(_first(item, "00201206")), n_instances=_int(_first(item, "00201208")),
            uid=str(uid), accession=str(_first(item, "00080050") or ""), needles=needles,
            patient_needles=tuple(identifiers(attrs, patient_only=True)),
        )

    def study(self, study_uid: str) -> StudyInfo:
        """One study by its source UID.

        Raises:
            PacsError: the server does not hold it (named by its reference), or a request failed.
        """
        ref = self.ref(study_uid)
        items = self.call("find study", lambda: self.client.search_for_studies(
            search_filters={"StudyInstanceUID": study_uid}, fields=STUDY_FIELDS), ref=ref)
        infos = [i for i in (self._study_info(x) for x in items) if i is not None and i.uid == study_uid]
        if not infos:
            raise PacsError(f"study {ref}: not found on the server (404)", path=self.config.display_url)
        return infos[0]

    def series(self, study: StudyInfo) -> list[SeriesInfo]:
        """The study's series, by series number.

        Raises:
            PacsError: the study is gone (404) or a request failed.
        """
        items = self.call("list series", lambda: self.client.search_for_series(
            study.uid, fields=SERIES_FIELDS), ref=study.ref, missing_ok=True)
        out = [SeriesInfo(uid=str(_first(i, "0020000E")), modality=str(_first(i, "00080060") or ""),
                          number=_int(_first(i, "00200011")), n_instances=_int(_first(i, "00201209")))
               for i in items if _first(i, "0020000E")]
        if not out:
            raise PacsError(f"study {study.ref}: not found on the server (404, or it holds no series)",
                            path=self.config.display_url)
        return sorted(out, key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))

    def instances(self, study: StudyInfo, series: SeriesInfo) -> list[str]:
        """SOP Instance UIDs of a series, by instance number."""
        items = self.call("list instances", lambda: self.client.search_for_instances(
            study.uid, series.uid, fields=("InstanceNumber",), get_remaining=True), ref=study.ref)
        rows = [(_int(_first(i, "00200013")), str(_first(i, "00080018"))) for i in items if _first(i, "00080018")]
        rows.sort(key=lambda r: (r[0] if r[0] is not None else 1 << 30, r[1]))
        return [uid for _, uid in rows]

    # -- WADO-RS ----------------------------------------------------------------------

    def retrieve(self, study: StudyInfo, series: SeriesInfo, sop_uid: str) -> Any:
        """One instance as a pydicom dataset, in its stored transfer syntax."""
        return self.call("fetch instance", lambda: self.client.retrieve_instance(
            study.uid, series.uid, sop_uid, media_types=ORIGINAL_SYNTAX), ref=study.ref)

    def retrieve_series(self, study: StudyInfo, series: SeriesInfo) -> list[Any]:
        """A whole series in one multipart answer (small series such as a text SR)."""
        return self.call("fetch series", lambda: self.client.retrieve_series(
            study.uid, series.uid, media_types=ORIGINAL_SYNTAX), ref=study.ref)

    def iter_series(self, study: StudyInfo, series: SeriesInfo) -> Generator[Any, None, None]:
        """A whole series in one multipart WADO-RS answer, each instance (a pydicom
        dataset, stored transfer syntax) yielded as it arrives.

        Raises:
            PacsError: the request failed (while iterating too).
            Exception: whatever pydicom raises on a part it cannot parse.
        """
        parts = self.call("fetch series", lambda: self.client.iter_series(
            study.uid, series.uid, media_types=ORIGINAL_SYNTAX), ref=study.ref)
        sentinel = object()
        try:
            while True:
                ds = self.call("fetch series", lambda: next(parts, sentinel), ref=study.ref, count=False)
                if ds is sentinel:
                    return
                yield ds
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()

    def series_headers(self, study: StudyInfo, series: SeriesInfo) -> list[Any]:
        """The series' instance headers (WADO-RS metadata) as pixel-free pydicom datasets."""
        from pydicom import Dataset

        items = self.call("fetch series metadata", lambda: self.client.retrieve_series_metadata(
            study.uid, series.uid), ref=study.ref)
        return [Dataset.from_json(m, bulk_data_uri_handler=lambda *_a: b"") for m in items]

    # -- STOW-RS ----------------------------------------------------------------------

    def store(self, datasets: Iterable[Any]) -> int:
        """Store datasets on the server (STOW-RS); returns how many it accepted.

        Raises:
            PacsError: the server refused some or all of them.
        """
        items = list(datasets)
        answer = self.call("store", lambda: self.client.store_instances(items))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise PacsError(f"the server refused {len(failed)} of {len(items)} object(s) (STOW-RS)",
                            path=self.config.display_url)
        return len(items)


def _status_message(code: int, what: str) -> str:
    if code == 401:
        return f"the server refused the credentials (HTTP 401, {what}); check MEDVL_PACS_USERNAME/PASSWORD or TOKEN"
    if code == 403:
        return f"the credentials may not do this (HTTP 403, {what})"
    if code == 404:
        return f"not found on the server (HTTP 404, {what})"
    if code in (408, 429, 503, 504):
        return f"the server is busy or timed out (HTTP {code}, {what}) after retries"
    return f"the server answered HTTP {code} ({what})"

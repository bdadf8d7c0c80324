"""A throw-away Orthanc server and test data for it (tests, benchmarks, the browser walk).

:class:`OrthancServer` starts Debian's ``Orthanc`` with the DICOMweb plugin as an
ordinary process on 127.0.0.1 at a free port, with its storage in a temporary folder and
its DICOM port off; it is stopped by its process id. :func:`load_synthetic` fills it
with the synthetic corpus' radiographs and CT series, each study given identifying
values (names, ids, accession numbers, birth dates, an institution) and a Basic Text SR
holding its report, so tests can prove none of them comes out. :class:`FaultProxy`
sits between a client and the server to make it slow, refuse credentials or fail.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from typing_extensions import Self

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_missing() -> str:
    """Why a test Orthanc cannot start here, or '' when it can."""
    if not Path(ORTHANC).is_file():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return ""


def free_port() -> int:
    """A TCP port nobody listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """Orthanc on 127.0.0.1 with DICOMweb at ``/dicom-web/``.

    Args:
        users: ``{user: password}`` to require HTTP basic authentication.
        workdir: folder for storage and config (a temporary one, removed on stop, if None).

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, users: dict[str, str] | None = None, workdir: str | Path | None = None) -> None:
        self.users = users or {}
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medvl-orthanc-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (Orthanc's REST root)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        return self.base + "/dicom-web"

    def start(self, timeout: float = 30.0) -> Self:
        """Start the server and wait until it answers.

        Raises:
            RuntimeError: it is not installed or does not answer in ``timeout`` seconds.
        """
        missing = orthanc_missing()
        if missing:
            raise RuntimeError(missing)
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "Name": "medvl-test", "HttpPort": self.port, "DicomServerEnabled": False,
            "DicomPort": free_port(), "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users, "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{self.port}"},
            "HttpThreadsCount": 16, "StableAge": 1, "SaveJobs": False, "LimitFindResults": 0,
        }
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(config), encoding="utf-8")
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([ORTHANC, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.workdir}/orthanc.log")
            try:
                self.rest("GET", "/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout:g} s")

    def stop(self) -> None:
        """Stop the server (by its pid) and remove a temporary work folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rest(self, method: str, path: str, data: bytes | None = None) -> Any:
        """Call Orthanc's own REST API (as its admin user when authentication is on)."""
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.users:
            import base64

            user, pw = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def upload(self, path_or_bytes: str | Path | bytes) -> dict[str, Any]:
        """Store one DICOM file (``POST /instances``)."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        answer = self.rest("POST", "/instances", data)
        if not isinstance(answer, dict) or answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc did not store the file: {answer!r}")
        return answer

    def delete_study(self, study_uid: str) -> None:
        """Remove a study (by its StudyInstanceUID)."""
        ids = self.rest("POST", "/tools/lookup", study_uid.encode())
        for item in ids:
            if item.get("Type") == "Study":
                self.rest("DELETE", item["Path"])


# -- test data ------------------------------------------------------------------------

@dataclass
class LoadedStudy:
    """A study put on the test server and what a correct ingest must make of it."""

    study_uid: str
    modality: str
    report: dict[str, str]
    labels: dict[str, int]
    identifiers: list[str]
    n_instances: int
    files: list[Path] = field(default_factory=list)


def text_sr(study: Any, sections: dict[str, str], extra_text: str = "") -> Any:
    """A Basic Text SR in the same study/patient as dataset ``study`` holding ``sections``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID", "InstitutionName",
               "StudyDescription"):
        setattr(ds, kw, study.get(kw, "") or "")
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.Manufacturer = "medvl test RIS"
    ds.ContentDate, ds.ContentTime = study.get("StudyDate", ""), "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    items = []
    names = {"findings": ("121070", "Findings"), "impression": ("121073", "Impression")}
    for key, text in sections.items():
        value, meaning = names.get(key, ("121070", "Findings"))
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
        item.ConceptNameCodeSequence = [code(value, "DCM", meaning)]
        item.TextValue = text + (extra_text if key == "findings" else "")
        items.append(item)
    ds.ContentSequence = items
    return ds


def _identify(ds: Any, i: int, institution: str, other_ids: bool = False) -> list[str]:
    """Give a dataset identifying values; return them."""
    name, pid, acc = f"DOE{i:03d}^JANE", f"MRN{900000 + i}", f"ACC{700000 + i}"
    ds.PatientName, ds.PatientID, ds.AccessionNumber = name, pid, acc
    ds.PatientBirthDate = "19580214"
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.StudyDescription = f"CHEST for DOE{i:03d} JANE"
    ids = [f"DOE{i:03d}", pid, acc, "19580214", institution, "HOUSE"]
    if other_ids:
        from pydicom.dataset import Dataset

        ds.OtherPatientIDs = f"OLD{500000 + i}"
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = f"SEQ{300000 + i}", "OLDRIS", "TEXT"
        ds.OtherPatientIDsSequence = [item]
        ids += [f"OLD{500000 + i}", f"SEQ{300000 + i}"]
    return ids


def load_synthetic(server: OrthancServer, workdir: str | Path, *, n_cxr: int = 6, n_ct: int = 1, seed: int = 7,
                   image_size: int = 64, ct_size: tuple[int, int, int] = (32, 32, 16), sr_reports: bool = True,
                   corrupt_ct_slice: int | None = None, other_ids: bool = False) -> list[LoadedStudy]:
    """Generate the synthetic corpus, make it identifiable, and store it on ``server``.

    Each study gets a patient name, id, accession number, birth date, institution and
    referring physician, and (``sr_reports``) a Basic Text SR whose findings quote the
    patient's name and id, as careless dictation does.

    Args:
        corrupt_ct_slice: truncate the pixel data of this slice of the first CT series.
        other_ids: also set OtherPatientIDs and OtherPatientIDsSequence (old MRNs).
    """
    import pydicom

    from medvl.data.manifest import read_manifest, resolve_path
    from medvl.data.synth.corpus import generate_corpus

    workdir = Path(workdir)
    manifest = generate_corpus(workdir / "corpus", n_cxr=n_cxr, n_ct=n_ct, seed=seed, progress=False,
                               image_size=image_size, ct_size=ct_size, ct_dicom_fraction=1.0,
                               compressed_fraction=0.0, workers=1)
    loaded: list[LoadedStudy] = []
    for i, row in enumerate(read_manifest(manifest)):
        image = resolve_path(manifest, row.image)
        files = sorted(image.iterdir()) if image.is_dir() else [image]
        ids: list[str] = []
        first = None
        for k, f in enumerate(files):
            ds = pydicom.dcmread(f)
            ids = _identify(ds, i, "ST EXAMPLE GENERAL HOSPITAL", other_ids)
            if corrupt_ct_slice is not None and row.modality == "CT" and k == corrupt_ct_slice and \
                    not any(s.modality == "CT" for s in loaded):
                ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2 // 2 * 2]
            ds.save_as(f, enforce_file_format=True)
            server.upload(f)
            first = first or ds
        report = {k: v for k, v in row.report.items() if k in ("findings", "impression")}
        if sr_reports and first is not None:
            sr = text_sr(first, report, extra_text=f" Discussed with DOE{i:03d} JANE (MRN{900000 + i}).")
            path = workdir / "sr" / f"{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            sr.save_as(path, enforce_file_format=True)
            server.upload(path)
        loaded.append(LoadedStudy(str(first.StudyInstanceUID), row.modality, report,  # type: ignore[union-attr]
                                  dict(row.labels), ids, len(files), files))
    return loaded


def load_real_files(server: OrthancServer, workdir: str | Path, names: list[str], *, first: int = 100,
                    sr_reports: dict[str, dict[str, str]] | None = None) -> list[LoadedStudy]:
    """Store real files shipped with ``pydicom`` / ``pydicom-data`` on ``server``, each made
    identifiable as :func:`load_synthetic` does (with OtherPatientIDs); pixels and UIDs as shipped.

    Args:
        names: test file names, e.g. ``["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm"]``.
        first: number of the first made-up patient (keeps ids apart from the synthetic ones).
        sr_reports: file name -> report sections to store as a text SR in its study.

    Raises:
        FileNotFoundError: a file is not installed (``pip install pydicom-data``).
    """
    import pydicom
    from pydicom.data import get_testdata_file

    out = Path(workdir) / "real"
    out.mkdir(parents=True, exist_ok=True)
    loaded = []
    for i, name in enumerate(names, start=first):
        src = get_testdata_file(name, download=False)
        if src is None:
            raise FileNotFoundError(f"{name} is not installed (pydicom / pydicom-data)")
        ds = pydicom.dcmread(src)
        ids = _identify(ds, i, "ST EXAMPLE GENERAL HOSPITAL", other_ids=True)
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        server.upload(path)
        report = (sr_reports or {}).get(name, {})
        if report:
            sr = text_sr(ds, report, extra_text=f" Discussed with DOE{i:03d} JANE (MRN{900000 + i}).")
            sr_path = out / f"{name}.sr.dcm"
            sr.save_as(sr_path, enforce_file_format=True)
            server.upload(sr_path)
        loaded.append(LoadedStudy(str(ds.StudyInstanceUID), str(ds.Modality), report, {}, ids, 1, [path]))
    return loaded


# -- fault injection ------------------------------------------------------------------

@dataclass
class Fault:
    """What :class:`FaultProxy` does to requests whose path contains ``match``."""

    match: str = ""
    delay_s: float = 0.0
    status: int | None = None


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that can delay or fail requests,
    require a bearer token, and records every path it forwards.

    Args:
        upstream: ``http://127.0.0.1:PORT`` of the real server.
        bearer: when set, requests without ``Authorization: Bearer <bearer>`` get 401;
            the header is not forwarded.
    """

    def __init__(self, upstream: str, bearer: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.bearer = bearer
        self.faults: list[Fault] = []
        self.paths: list[str] = []
        self.seen_auth: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.on_request: Callable[[str], None] | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        proxy = self
        host = self.upstream.split("//", 1)[1]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy.paths.append(self.path)
                auth = self.headers.get("Authorization", "")
                proxy.seen_auth.append(auth)
                if proxy.on_request is not None:
                    proxy.on_request(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = _read_chunked(self.rfile)
                for fault in proxy.faults:
                    if fault.match in self.path:
                        if fault.delay_s:
                            time.sleep(fault.delay_s)
                        if fault.status:
                            return self._reply(fault.status, b"")
                if proxy.bearer is not None and auth != f"Bearer {proxy.bearer}":
                    return self._reply(401, b"")
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "authorization", "transfer-encoding", "content-length",
                                                "connection")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(host, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_chunked(stream: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(stream.readline().strip() or b"0", 16)
        if size == 0:
            stream.readline()
            return bytes(out)
        out += stream.read(size)
        stream.readline()


def instance_fetches(paths: list[str]) -> list[str]:
    """The WADO-RS instance paths among a proxy's recorded paths."""
    return [p.split("?")[0] for p in paths if "/instances/" in p and "/metadata" not in p
            and p.split("?")[0].count("/") >= 7 and "/dicom-web/studies/" in p]


def series_fetches(paths: list[str]) -> list[str]:
    """The WADO-RS whole-series paths (``.../studies/S/series/E``) among a proxy's recorded paths."""
    import re

    return [p.split("?")[0] for p in paths if re.search(r"/dicom-web/studies/[^/]+/series/[^/?]+$", p.split("?")[0])]


def env_without_pacs(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without ``MEDVL_PACS_*`` (tests set their own)."""
    return {k: v for k, v in (env or os.environ).items() if not k.startswith("MEDVL_PACS_")}

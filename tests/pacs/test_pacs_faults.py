"""Bad conditions against a real Orthanc server: down, 401, 404, corrupt instance, slow,
too large, interrupted. Each gives one clear line naming the study by its keyed reference;
nothing is lost and the manifest never names half a study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pacs_helpers import all_bytes, needs_orthanc

from medvl.cli import main
from medvl.data.manifest import read_manifest, resolve_path
from medvl.pacs.testing import (
    FaultProxy,
    OrthancServer,
    free_port,
    instance_fetches,
    load_synthetic,
    series_fetches,
)

pytestmark = needs_orthanc


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """Orthanc with 3 radiographs and 2 CT series; slice 5 of the first CT is truncated."""
    work = tmp_path_factory.mktemp("orthanc-faults")
    with OrthancServer() as server:
        studies = load_synthetic(server, work, n_cxr=3, n_ct=2, seed=11, corrupt_ct_slice=5)
        yield server, studies


def _refs(out: Path) -> dict[str, str]:
    report = json.loads((out / "ingest_report.json").read_text())
    return {s["ref"]: s["reason"] for s in report["skipped_studies"]}


def _cached(out: Path, study) -> set[str]:
    """Source SOP Instance UIDs of ``study`` whose de-identified file the cache records and holds."""
    import pydicom

    from medvl.pacs.cache import IngestCache
    from medvl.pacs.identity import keyed, load_secret

    secret = load_secret(out / ".medvl-pacs")
    cache = IngestCache(out, out / ".medvl-pacs")
    try:
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.files]
        return {u for u in uids if cache.instance(keyed(secret, "sop:" + u)) is not None}
    finally:
        cache.close()


def _ref(out: Path, study_uid: str) -> str:
    from medvl.pacs.identity import load_secret, study_ref

    return study_ref(load_secret(out / ".medvl-pacs"), study_uid)


def test_server_down_is_one_line(tmp_path, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["prepare", "dicomweb", "--url", url, "--out", str(tmp_path / "o"), "--timeout", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the server" in err[0] and "Traceback" not in err[0]


def test_basic_auth_401_and_success_never_print_the_password(tmp_path, capfd, monkeypatch) -> None:
    with OrthancServer(users={"radiology": "s3cr3t-Pw!"}) as server:
        load_synthetic(server, tmp_path / "data", n_cxr=2, n_ct=0)
        monkeypatch.setenv("MEDVL_PACS_USERNAME", "radiology")
        monkeypatch.setenv("MEDVL_PACS_PASSWORD", "wrong-Pw!")
        assert main(["prepare", "dicomweb", "--url", server.url, "--out", str(tmp_path / "o")]) == 2
        err = capfd.readouterr().err
        assert "HTTP 401" in err and "wrong-Pw" not in err and len(err.strip().splitlines()) == 1
        monkeypatch.setenv("MEDVL_PACS_PASSWORD", "s3cr3t-Pw!")
        assert main(["prepare", "dicomweb", "--url", server.url, "--out", str(tmp_path / "o")]) == 0
        printed = capfd.readouterr()
    assert len(read_manifest(tmp_path / "o" / "manifest.jsonl")) == 2
    assert b"s3cr3t" not in all_bytes(tmp_path / "o")
    assert "s3cr3t" not in printed.out + printed.err


def test_bearer_token_from_config_file(fault_server, tmp_path, capfd) -> None:
    server, _studies = fault_server
    with FaultProxy(server.base, bearer="tok-9f8e7d") as proxy:
        cfg = tmp_path / "pacs.yaml"
        cfg.write_text(f"url: {proxy.url}/dicom-web\ntoken: tok-9f8e7d\n")
        cfg.chmod(0o600)
        out = tmp_path / "o"
        assert main(["prepare", "dicomweb", "--pacs-config", str(cfg), "--out", str(out), "--modality", "CR,DX"]) == 0
        assert set(proxy.seen_auth) == {"Bearer tok-9f8e7d"}
        printed = capfd.readouterr()
        assert "tok-9f8e7d" not in printed.out + printed.err
        cfg.write_text(f"url: {proxy.url}/dicom-web\ntoken: expired\n")
        assert main(["prepare", "dicomweb", "--pacs-config", str(cfg), "--out", str(tmp_path / "x")]) == 2
        assert "HTTP 401" in capfd.readouterr().err
    assert len(read_manifest(out / "manifest.jsonl")) == 3
    assert b"tok-9f8e7d" not in all_bytes(out)


def test_corrupt_instance_skips_its_study_only(fault_server, tmp_path, capsys) -> None:
    import pydicom

    server, studies = fault_server
    bad = next(s for s in studies if s.modality == "CT")
    victim = pydicom.dcmread(bad.files[5])  # the slice load_synthetic truncated
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in bad.files}
    out = tmp_path / "o"
    with FaultProxy(server.base) as proxy:
        assert main(["prepare", "dicomweb", "--url", proxy.url + "/dicom-web", "--out", str(out)]) == 0
        # a fresh series comes in one WADO-RS request
        image_series = str(pydicom.dcmread(bad.files[0], stop_before_pixels=True).SeriesInstanceUID)
        assert len([p for p in series_fetches(proxy.paths) if p.endswith(image_series)]) == 1
        assert not [p for p in instance_fetches(proxy.paths) if bad.study_uid in p]
        printed = capsys.readouterr().out
        kept = _cached(out, bad)
        # the good instances read before the corrupt one stay cached (de-identified)
        assert len(kept) >= 5 and str(victim.SOPInstanceUID) not in kept
        proxy.paths.clear()
        # a rerun asks, one by one, only for the corrupt one and those not stored when it was found
        assert main(["prepare", "dicomweb", "--url", proxy.url + "/dicom-web", "--out", str(out)]) == 0
        second = instance_fetches(proxy.paths)
        assert not [p for p in series_fetches(proxy.paths) if p.endswith(image_series)]
    assert sorted(p.rsplit("/", 1)[1] for p in second) == sorted(uids - kept)
    ref = _ref(out, bad.study_uid)
    line = next(ln for ln in printed.splitlines() if ref in ln)
    assert line == (f"study {ref}: instance {victim.InstanceNumber} of {bad.n_instances} is corrupt: pixel data "
                    f"holds {len(victim.PixelData)} of the 2048 bytes its header announces; skipped")
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == len(studies) - 1 and all(r.meta["ref"] != ref for r in rows)


def test_study_deleted_after_search_is_404(fault_server, tmp_path) -> None:
    from medvl.pacs.cache import IngestCache
    from medvl.pacs.client import DicomWebSource
    from medvl.pacs.config import PacsConfig
    from medvl.pacs.ingest import Ingester

    _server, _studies = fault_server
    with OrthancServer() as other:
        load_synthetic(other, tmp_path / "data", n_cxr=3, n_ct=0, seed=5)
        src = DicomWebSource(PacsConfig(url=other.url))
        found = src.search_studies()
        other.delete_study(found[1].uid)
        out = tmp_path / "o"
        result = Ingester(src, out, IngestCache(out, out / ".state")).run(found, progress=False)
    statuses = [(o.ref, o.status) for o in result.outcomes]
    assert statuses == [(found[0].ref, "done"), (found[1].ref, "skipped"), (found[2].ref, "done")]
    assert "not found on the server (404" in result.outcomes[1].reason
    assert result.outcomes[1].line().startswith(f"study {found[1].ref}: not found")


def test_slow_server_times_out_per_study(fault_server, tmp_path, capsys) -> None:
    server, studies = fault_server
    slow = next(s for s in studies if s.modality != "CT")
    with FaultProxy(server.base) as proxy:
        from medvl.pacs.testing import Fault

        proxy.faults.append(Fault(match=f"/studies/{slow.study_uid}/series/", delay_s=3.0))
        out = tmp_path / "o"
        t0 = time.monotonic()
        assert main(["prepare", "dicomweb", "--url", proxy.url + "/dicom-web", "--out", str(out),
                     "--timeout", "1", "--modality", "CR,DX"]) == 0
        assert time.monotonic() - t0 < 30
    ref = _ref(out, slow.study_uid)
    assert "did not answer within 1 s" in _refs(out)[ref]
    assert f"study {ref}: the server did not answer within 1 s" in capsys.readouterr().out
    assert len(read_manifest(out / "manifest.jsonl")) == 2


def test_study_over_the_instance_limit_is_not_fetched(fault_server, tmp_path) -> None:
    server, studies = fault_server
    with FaultProxy(server.base) as proxy:
        out = tmp_path / "o"
        assert main(["prepare", "dicomweb", "--url", proxy.url + "/dicom-web", "--out", str(out),
                     "--max-instances", "8"]) == 0
        fetched = instance_fetches(proxy.paths)
    cts = [s for s in studies if s.modality == "CT"]
    for ct in cts:
        assert "more than the limit of 8 (max_instances); nothing fetched" in _refs(out)[_ref(out, ct.study_uid)]
        assert not any(ct.study_uid in p for p in fetched)
    assert len(read_manifest(out / "manifest.jsonl")) == 3


def test_interrupted_ingest_resumes_and_manifest_never_holds_half_a_study(fault_server, tmp_path) -> None:
    server, studies = fault_server
    good_ct = [s for s in studies if s.modality == "CT"][1]
    out = tmp_path / "o"
    with FaultProxy(server.base) as proxy:
        cmd = [sys.executable, "-m", "medvl.cli", "prepare", "dicomweb", "--url", proxy.url + "/dicom-web",
               "--out", str(out), "--workers", "1", "--modality", "CT"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60

        state = out / ".medvl-pacs"

        def stored() -> int:  # instances of the good CT series the cache holds (never creates the state)
            ready = (state / "secret").is_file() and (state / "state.sqlite").is_file()
            return len(_cached(out, good_ct)) if ready else 0

        while stored() < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # the hardest stop: no cleanup at all
        proc.wait(timeout=10)
        kept = _cached(out, good_ct)
        # killed mid-series (the good CT series streams in one answer; each instance is
        # stored as it is read from it)
        assert 3 <= len(kept) < good_ct.n_instances, len(kept)
        # no manifest row names a study whose files are not all there
        if (out / "manifest.jsonl").exists():
            for r in read_manifest(out / "manifest.jsonl"):
                p = resolve_path(out / "manifest.jsonl", r.image)
                assert len(list(p.iterdir()) if p.is_dir() else [p]) == r.meta["instances"]
        proxy.paths.clear()
        assert subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False).returncode == 0
        second = [p for p in instance_fetches(proxy.paths) if good_ct.study_uid in p]
    # the rerun fetches, once each, only what the first run had not stored
    assert len(second) == len(set(second)) == good_ct.n_instances - len(kept)
    assert not {p.rsplit("/", 1)[1] for p in second} & kept
    rows = read_manifest(out / "manifest.jsonl")
    assert [r.meta["ref"] for r in rows] == [_ref(out, good_ct.study_uid)]
    assert len(list(resolve_path(out / "manifest.jsonl", rows[0].image).iterdir())) == good_ct.n_instances


def test_other_patient_ids_never_leak(tmp_path) -> None:
    """OtherPatientIDs and OtherPatientIDsSequence (old MRNs) never reach the output: the
    de-identification removes both, so the studies are ingested (not refused) and neither
    element nor any of their values is in a cached file, the manifest or the cache's state."""
    import pydicom

    with OrthancServer() as server:
        studies = load_synthetic(server, tmp_path / "data", n_cxr=2, n_ct=0, seed=3, other_ids=True)
        # the server holds both elements, so they really are sent to the ingest
        for s in studies:
            src = pydicom.dcmread(s.files[0], stop_before_pixels=True)
            assert src.OtherPatientIDs and src.OtherPatientIDsSequence[0].PatientID
            meta = server.rest("GET", f"/dicom-web/studies/{s.study_uid}/metadata")
            assert any("00101000" in m and "00101002" in m for m in meta)
        out = tmp_path / "o"
        assert main(["prepare", "dicomweb", "--url", server.url, "--out", str(out)]) == 0
    blob = all_bytes(out)
    for s in studies:
        assert any(n.startswith("OLD") for n in s.identifiers) and any(n.startswith("SEQ") for n in s.identifiers)
        for needle in s.identifiers:
            assert needle.encode() not in blob, needle
    rows, skipped = read_manifest(out / "manifest.jsonl"), _refs(out)
    assert len(rows) == 2 and not skipped, skipped
    files = sorted((out / "images").rglob("*.dcm"))
    assert len(files) == 2
    for f in files:
        ds = pydicom.dcmread(f)
        assert "OtherPatientIDs" not in ds and "OtherPatientIDsSequence" not in ds, f
        assert (0x0010, 0x1000) not in ds and (0x0010, 0x1002) not in ds
    assert main(["validate", str(out / "manifest.jsonl")]) == 0


def test_study_over_the_size_limit_stops_and_is_skipped(fault_server, tmp_path) -> None:
    """--max-study-mb: the CT series (16 slices of 2 KiB) passes 0.01 MB; the radiographs
    (8 KiB) do not. The CT studies are skipped with one line, not all their slices stored."""
    server, studies = fault_server
    out = tmp_path / "o"
    assert main(["prepare", "dicomweb", "--url", server.url, "--out", str(out), "--max-study-mb", "0.01"]) == 0
    refs = _refs(out)
    cts = [s for s in studies if s.modality == "CT"]
    good = cts[1]  # the first CT has its corrupt slice
    assert "its data passed the limit of 0.01 MB (max_study_mb); fetching stopped" in refs[_ref(out, good.study_uid)]
    assert len(_cached(out, good)) < good.n_instances
    assert len(read_manifest(out / "manifest.jsonl")) == 3

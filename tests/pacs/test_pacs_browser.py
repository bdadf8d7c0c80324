"""Issue #14 point 4 end to end, in a real headless Chromium, against a real Orthanc.

The ``walk`` fixture (conftest) starts Orthanc, loads it with real files (pydicom's CT and
MR slices, pydicom-data's chest CR), synthetic radiographs and a synthetic CT series with
text SRs, all identifiable; ``medvl prepare dicomweb`` ingests it, ``medvl train`` and
``medvl index build`` make a model and an index of it. Here: ``medvl index search``, then
the viewer (``medvl viewer`` command line, PACS mode configured from the environment with
storing allowed) in a browser: list the server's studies, filter by modality, open a
study (de-identified copy, similar cases from the index), export its findings as a DICOM
SR (download), store it on the server only when asked; an MR slice the model flags as
out of distribution is refused until the box is ticked. No identifying value from the
server is in the manifest, the cache, the index, the downloaded SR or any page's HTML.

Screenshots go to ``test-artifacts/pacs/`` at the repo root (gitignored), with
``walk.json`` (what was seen).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import all_bytes, needs_orthanc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))

from viewer_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

from medvl.cli import main
from medvl.pacs.sr import OOD_SUFFIX, findings_text

pytestmark = [needs_orthanc, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "pacs"
WAIT_MS = 90_000
FORBIDDEN = ("/tmp/", "Traceback", "medvl-pacs-")


def _settle(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('[data-stale=\"true\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=WAIT_MS)
    time.sleep(0.3)


def _alerts(page, kind: str) -> list[str]:
    return page.locator(f"[data-testid=stAlertContent{kind}]").all_inner_texts()


def _pick_modality(page, modality: str, replace: bool = False) -> None:
    box = page.locator("[data-testid=stSidebar] [data-testid=stMultiSelect] input").first
    box.click()
    if replace:  # Backspace in the empty input removes the chosen modality
        box.press("Backspace")
    box.fill(modality)
    box.press("Enter")
    page.keyboard.press("Escape")
    _settle(page)


def _export(page, shots: Path, name: str, seen: dict, html: list[str]) -> tuple[bytes | None, list[str]]:
    """Press the export button; return the downloaded SR (or None) and the errors shown."""
    page.get_by_role("button", name="Export findings as DICOM SR").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some(b => b.innerText.includes('Download the SR')) || "
        "[...document.querySelectorAll('[data-testid=stAlertContentError]')].some("
        "e => e.innerText.includes('No SR exported'))", timeout=WAIT_MS)
    _settle(page)
    errors = [e for e in _alerts(page, "Error") if "No SR exported" in e]
    html.append(page.content())
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    if errors:
        return None, errors
    with page.expect_download(timeout=WAIT_MS) as dl:
        page.get_by_role("button", name="Download the SR (DICOM file)").click()
    target = shots / f"{name}.sr.dcm"
    dl.value.save_as(str(target))
    seen[f"{name}_download_name"] = dl.value.suggested_filename
    return target.read_bytes(), errors


def browse(url: str, walk, shots: Path, seen: dict, html: list[str]) -> None:
    """Drive the viewer's PACS mode; fill ``seen`` and ``html`` with what the page showed."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    server = walk.server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.get_by_test_id("medvl-image").first.wait_for()
            _settle(page)
            # the PACS mode: the server's studies, one opened (de-identified copy), similar cases
            page.get_by_text("PACS study", exact=True).click()
            page.get_by_text("de-identified copy").first.wait_for()
            page.get_by_text("#3 ·").first.wait_for()
            _settle(page)
            seen["listed"] = page.get_by_text("studies (at most").first.inner_text()
            html.append(page.content())
            page.screenshot(path=str(shots / "1-pacs-list-and-study.png"), full_page=True)

            # a radiograph: export its findings; stored on the server only when asked
            _pick_modality(page, "DX")
            page.get_by_text("de-identified copy").first.wait_for()
            page.get_by_text("#3 ·").first.wait_for()
            _settle(page)
            seen["dx_heading"] = page.get_by_role("heading", name="de-identified copy").first.inner_text()
            seen["results"] = page.get_by_text("#1 ·").count()
            html.append(page.content())
            before = len(server.rest("GET", "/instances"))
            sr, errors = _export(page, shots, "2-dx-export", seen, html)
            if sr is None:  # the guard may flag a training radiograph; then export as allowed
                seen["dx_flagged"] = errors
                page.get_by_text("Export even if the model flags", exact=False).first.click()
                _settle(page)
                sr, errors = _export(page, shots, "2-dx-export", seen, html)
            seen["dx_sr"] = sr
            seen["instances_after_download"] = len(server.rest("GET", "/instances")) - before
            page.get_by_role("button", name="Store the SR on the PACS (STOW-RS)").click()
            page.get_by_text("SR stored on the PACS").first.wait_for()
            _settle(page)
            seen["stored_message"] = [m for m in _alerts(page, "Success") if "stored" in m]
            seen["instances_after_store"] = len(server.rest("GET", "/instances")) - before
            html.append(page.content())
            page.screenshot(path=str(shots / "3-dx-stored.png"), full_page=True)

            # an MR slice: the model was trained on radiographs; refused until allowed
            if page.get_by_role("checkbox", name="Export even if the model flags").first.is_checked():
                page.get_by_text("Export even if the model flags", exact=False).first.click()
                _settle(page)
            _pick_modality(page, "MR", replace=True)
            page.get_by_role("heading", name="(MR, de-identified copy)").first.wait_for()
            _settle(page)
            refused, errors = _export(page, shots, "4-mr-refused", seen, html)
            seen["mr_refused"] = (refused is None, errors)
            seen["mr_download_button"] = page.get_by_role("button", name="Download the SR (DICOM file)").count()
            page.get_by_text("Export even if the model flags", exact=False).first.click()
            _settle(page)
            seen["mr_sr"], _ = _export(page, shots, "5-mr-allowed", seen, html)
            seen["exceptions"] = page.get_by_test_id("stException").count()
        finally:
            browser.close()


def test_prepare_index_search_viewer_walk_and_sr_export_against_orthanc(walk, tmp_path, capsys) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium to run the browser test)")
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    # search the index built from the PACS ingest
    assert main(["index", "search", str(walk.index), "--text", "pleural effusion", "-k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(hits) == 3
    ids = {r.study_id for r in walk.rows}
    assert all(h["study_id"] in ids for h in hits)

    seen: dict = {}
    html: list[str] = []
    on_server = set(walk.server.rest("GET", "/instances"))
    env = {"MEDVL_PACS_URL": walk.server.url, "MEDVL_PACS_STORE": "1"}
    with streamlit_server(walk.index, walk.model, tmp_path / "streamlit.log", env=env) as url:
        try:
            browse(url, walk, ARTIFACTS, seen, html)
        finally:
            (ARTIFACTS / "walk.json").write_text(json.dumps(
                {k: v for k, v in seen.items() if not isinstance(v, bytes)}, indent=1, default=str))
    log = (tmp_path / "streamlit.log").read_text(errors="replace")

    # the page: studies listed, one opened, similar cases, no exception
    n_studies = len(walk.studies)
    assert seen["listed"].startswith(f"{n_studies} studies"), seen["listed"]
    assert seen["dx_heading"].startswith("Study s-") and seen["results"] >= 1
    assert seen["exceptions"] == 0
    # the download: a TID 1500 SR of the opened (de-identified) study, research use only
    sr = pydicom.dcmread(ARTIFACTS / "2-dx-export.sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and "RESEARCH USE ONLY" in sr.SeriesDescription
    # of the viewer's own de-identified copy (a key of its own: not the source's UID, nor the ingest's)
    assert sr.PatientIdentityRemoved == "YES"
    assert str(sr.StudyInstanceUID) not in {s.study_uid for s in walk.studies}
    assert [f for f, _n, _v in findings_text(sr) if f == "Similar case retrieved from the case index"]
    other = {str(e.StudyInstanceUID) for e in sr.get("PertinentOtherEvidenceSequence", [])}
    assert other and other <= ids  # similar cases: the index's de-identified studies
    assert seen["2-dx-export_download_name"].startswith("s-")
    # nothing sent to the server until asked; then one SR, filed with the source study
    assert seen["instances_after_download"] == 0
    assert seen["instances_after_store"] == 1 and len(seen["stored_message"]) == 1
    stored = sorted(set(walk.server.rest("GET", "/instances")) - on_server)
    assert len(stored) == 1
    tags = walk.server.rest("GET", f"/instances/{stored[0]}/simplified-tags")
    assert tags["Modality"] == "SR" and "RESEARCH USE ONLY" in tags["SeriesDescription"]
    source = {s.study_uid: s for s in walk.studies}
    assert tags["StudyInstanceUID"] in source  # the source study: the PACS files it with the patient
    # the MR slice: refused with the reason, nothing to download; allowed, the SR says so
    refused, errors = seen["mr_refused"]
    assert refused and len(errors) == 1 and "out of distribution" in errors[0], errors
    assert seen["mr_download_button"] == 0
    mr = pydicom.dcmread(ARTIFACTS / "5-mr-allowed.sr.dcm")
    assert mr.SeriesDescription.endswith(OOD_SUFFIX)
    # no identifying value from the server in manifest, cache, index, downloads, pages or log
    blobs = {"prepared (manifest, images, cache)": all_bytes(walk.out).lower(),
             "index": all_bytes(walk.index).lower(),
             "downloaded SRs": (ARTIFACTS / "2-dx-export.sr.dcm").read_bytes().lower()
             + (ARTIFACTS / "5-mr-allowed.sr.dcm").read_bytes().lower(),
             "pages": "\n".join(html).lower().encode(), "viewer log": log.lower().encode()}
    assert len(html) >= 6
    for s in walk.studies:
        for needle in [*s.identifiers, s.study_uid]:
            for where, blob in blobs.items():
                assert needle.lower().encode() not in blob, (needle, where)
    for page_html in html:
        for bad in FORBIDDEN:
            assert bad not in page_html, bad
    for shot in ("1-pacs-list-and-study.png", "2-dx-export.png", "3-dx-stored.png", "4-mr-refused.png",
                 "5-mr-allowed.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000

"""The viewer in a real headless Chromium, as a radiologist meets it (points 1-7 of issue #13).

The server is started with the ``medvl viewer`` command line (``medvl_viewer.command``)
on a tiny real setup (60 synthetic radiographs, an untrained tiny model that carries a
``provenance.json`` as an imported model does, its index). The walk: landing page and
first image; the query case's labels, view and report in reading order; finding scores
as percentiles; paging and "open as query"; a text query with assertion-aware highlights,
its heatmap and colour bar; an upload under a patient-like file name (the name must not
be in the page's HTML) that survives a mode switch; a CT slice and an MR slice (warnings
above the results); a volume (wheel and arrow keys move the slice, z in mm); a 4D NIfTI
(volume choice); and the messages for oversize, empty, not-DICOM and truncated files.

Screenshots are written to ``test-artifacts/viewer/`` at the repo root (gitignored), with
``walk.json`` (timings and what was seen).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import pytest
from pydicom.data import get_testdata_file
from viewer_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "viewer"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
WAIT_MS = 60_000
#: Never on a page: tag numbers, server temp paths, tracebacks.
FORBIDDEN = ("(7FE0", "(0028", "group 0028", "/tmp/", "medvl-upload-", "Traceback")
PROVENANCE = {"name": "tiny-clip-test", "source": "hf-hub:example/tiny-clip", "licence": "MIT",
              "format": "open_clip", "conversion": "medvl.models.importers", "hub_name": "example/tiny-clip"}

pytestmark = pytest.mark.browser

#: The heatmap canvas's size, first hottest pixel (row-major) and its alpha.
PAINTED = """c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let best = -1, at = 0;
  for (let i = 0; i < c.width * c.height; i++) { if (d[4 * i + 3] > best) { best = d[4 * i + 3]; at = i; } }
  return {w: c.width, h: c.height, x: at % c.width, y: Math.floor(at / c.width), alpha: best,
          rgb: [d[4 * at], d[4 * at + 1], d[4 * at + 2]], display: getComputedStyle(c).display};
}"""


@pytest.fixture(scope="module")
def browser_data(tmp_path_factory):
    """60 synthetic radiographs (two pages of cases), a tiny model trained on them for two
    epochs by ``medvl train`` (so its directory has the calibration and training profile
    that training writes) and given a ``provenance.json`` as an imported model has, its index."""
    from viewer_pipeline import ViewerData

    import medvl
    from medvl.cli import main
    from medvl.index import build_index

    root = tmp_path_factory.mktemp("viewer-browser")
    assert main(["synth", "--out", str(root / "corpus"), "--n-cxr", "60", "--n-ct", "0", "--seed", "3",
                 "--image-size", "64"]) == 0
    manifest = root / "corpus" / "manifest.jsonl"
    assert main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(root / "run"),
                 f"data.manifest={manifest}", "train.epochs=2"]) == 0
    model_dir = root / "run" / "model"
    (model_dir / "provenance.json").write_text(json.dumps(PROVENANCE))
    build_index(medvl.load(model_dir), manifest, root / "index", config={"progress": False}, model_dir=model_dir)
    return ViewerData(manifest, model_dir, root / "index")


def _settle(page) -> None:
    """Wait until Streamlit finished the current run: no stale element, no running indicator."""
    page.wait_for_function(
        "() => !document.querySelector('[data-stale=\"true\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')",
        timeout=WAIT_MS,
    )
    time.sleep(0.3)


def _main_text(page) -> str:
    return page.locator("section.stMain, [data-testid=stMain]").first.inner_text()


def _alerts(page, kind: str) -> list[str]:
    return page.locator(f"[data-testid=stAlertContent{kind}]").all_inner_texts()


def _upload(page, path: Path, expect: str) -> None:
    """Upload ``path`` and wait until the page shows ``expect`` (then until the run ends)."""
    _settle(page)
    # After each upload the viewer draws a fresh uploader; until the rerun ends the old
    # one may linger, marked stale: the live one is the last.
    page.get_by_test_id("stFileUploaderDropzoneInput").last.set_input_files(str(path))
    page.get_by_text(expect).first.wait_for()
    _settle(page)


def _wait_label(page, before: str) -> None:
    """Wait until the slice label changed from ``before`` and the server drew the new slice."""
    page.wait_for_function(
        "b => { const l = document.querySelector('.medvl-slice-label') || "
        "Array.from(document.querySelectorAll('*')).map(e => e.shadowRoot).filter(Boolean)"
        ".map(r => r.querySelector('.medvl-slice-label')).find(Boolean); "
        "return l && l.textContent !== b && !l.textContent.endsWith('...'); }", arg=before)
    _settle(page)


def _marked(page) -> list[str]:
    return page.locator("mark").all_inner_texts()


def _slice_label(page) -> str:
    return page.locator(".medvl-slice-label").first.inner_text()


def walk(url: str, files: dict[str, Path], shots: Path, seen: dict) -> None:
    """Drive the viewer at ``url`` through points 1-7; fill ``seen`` with what was observed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(WAIT_MS)
            t0 = time.monotonic()
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.get_by_test_id("medvl-image").first.wait_for()
            seen["first_image_s"] = round(time.monotonic() - t0, 2)
            page.get_by_text("#5 ·").first.wait_for()
            _settle(page)
            seen["results_s"] = round(time.monotonic() - t0, 2)
            main = _main_text(page)
            # 7: landing line; the query case's labels, view, report in reading order
            seen["landing"] = "finds cases similar to a query" in main and "three ways" in main
            seen["deploy_button"] = page.get_by_text("Deploy", exact=True).count()
            report = page.locator("[data-testid=stMarkdownContainer]", has_text="INDICATION:").first.inner_text()
            seen["reading_order"] = [report.index(s) for s in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")
                                     if s in report]
            seen["case_caption"] = page.get_by_text("view · Labels").first.inner_text()
            # 1: scores in one format, model provenance next to the results
            table = page.get_by_test_id("stTable").first
            seen["score_header"] = table.locator("th").all_inner_texts()
            seen["score_values"] = table.locator("td").all_inner_texts()
            seen["model_caption"] = page.get_by_text("Model: ").first.inner_text()
            page.screenshot(path=str(shots / "1-case.png"), full_page=True)

            # 7: paging over the whole index, and "open as query"
            page.get_by_label("Page (of 2)").fill("2")
            page.get_by_label("Page (of 2)").press("Enter")
            page.get_by_text("Cases 51-60 of 60").wait_for()
            _settle(page)
            seen["page_2"] = page.get_by_text("Cases 51-60 of 60").count()
            second = page.get_by_text("#2 ·").first.inner_text().split(" · ")[1]
            page.get_by_role("button", name="Open as query").nth(1).click()
            page.get_by_role("heading", name=f"Case {second}").wait_for()
            _settle(page)
            seen["opened"] = (second, page.get_by_role("heading", name=f"Case {second}").count())

            # 5: the window changes in the image's fragment; time it in the browser
            t1 = time.monotonic()
            page.get_by_label("Level").first.fill("500")
            page.get_by_label("Level").first.press("Enter")
            _settle(page)
            seen["window_change_s"] = round(time.monotonic() - t1, 2)

            # 3 + 4: a text query: report-checked ranking, assertion-aware highlights, heatmap
            page.get_by_text("Free text", exact=True).click()
            box = page.get_by_label("Findings to search for")
            box.fill("left pleural effusion")
            box.press("Enter")
            page.get_by_text("Best match:").first.wait_for()
            page.get_by_text("#5 ·").first.wait_for()
            _settle(page)
            seen["text_marks"] = _marked(page)
            seen["heat_phrase"] = page.get_by_label("Heatmap phrase").first.input_value()
            seen["colour_bar"] = page.get_by_test_id("heat-colour-bar").count()
            seen["reranked_note"] = page.get_by_text("Ordered by the reports").count()
            seen["best_match"] = page.get_by_text("Best match:").first.inner_text().split(": ", 1)[1].strip()
            # 4: what the page painted over the image: the heatmap layer's size and hottest pixel
            seen["canvas"] = page.get_by_test_id("medvl-heat").first.evaluate(PAINTED)
            seen["image_size"] = page.get_by_test_id("medvl-image").first.evaluate(
                "i => [i.naturalHeight, i.naturalWidth]")
            page.screenshot(path=str(shots / "2-text-query.png"), full_page=True)
            # 2: nonsense text gets a warning above the results
            box.fill("asdfgh qwerty")
            box.press("Enter")
            page.get_by_text("unlike the cases in the index").first.wait_for()
            _settle(page)
            seen["nonsense_warning"] = [w for w in _alerts(page, "Warning") if "unlike the cases" in w]
            seen["nonsense_marks"] = _marked(page)
            page.screenshot(path=str(shots / "2b-nonsense-text.png"), full_page=True)

            # 1 + 6: an upload under a patient-like name; scores, results, no name in the HTML
            page.get_by_text("Uploaded image", exact=True).click()
            page.get_by_text("Largest accepted file").first.wait_for()
            _upload(page, files["named"], "#5 ·")
            seen["upload_name_in_html"] = files["named"].stem in page.content()
            seen["upload_current"] = page.get_by_text("Current upload:").first.inner_text()
            page.screenshot(path=str(shots / "3-upload.png"), full_page=True)
            # 5: the upload survives a mode switch
            page.get_by_text("Free text", exact=True).click()
            _settle(page)
            page.get_by_text("Uploaded image", exact=True).click()
            # the click's rerun may not have begun when _settle looks: wait for the held upload's panel
            # (a lost upload shows the "Upload ... in the sidebar" prompt instead and the wait times out)
            kept = page.get_by_role("heading", name="Uploaded image").first
            try:
                kept.wait_for(timeout=WAIT_MS)
            except PlaywrightTimeoutError:
                pass
            _settle(page)
            seen["upload_kept"] = page.get_by_role("heading", name="Uploaded image").count()

            # 2: inputs unlike the index: a CT slice and an MR slice
            for name, modality in (("ct", "CT"), ("mr", "MR")):
                _upload(page, files[name], f"{modality} image")
                seen[f"warning_{name}"] = [w for w in _alerts(page, "Warning") if "unlike the cases" in w]
                seen[f"scores_withheld_{name}"] = page.get_by_text("Finding scores are not shown").count()
                page.screenshot(path=str(shots / f"4-unlike-index-{name}.png"), full_page=True)

            # 5: a volume: wheel and arrow keys over the image move the slice; z in mm
            _upload(page, files["volume"], "cannot be searched or scored")
            seen["volume_info"] = [i for i in _alerts(page, "Info") if "cannot be searched" in i]
            seen["volume_errors"] = _alerts(page, "Error")
            before = _slice_label(page)
            image = page.get_by_test_id("medvl-image").first
            image.hover()
            page.mouse.wheel(0, 120)
            _wait_label(page, before)
            after_wheel = _slice_label(page)
            image.click()
            page.keyboard.press("ArrowDown")
            _wait_label(page, after_wheel)
            seen["slices"] = [before, after_wheel, _slice_label(page)]
            page.screenshot(path=str(shots / "5-volume.png"), full_page=True)
            # 5: a 4D NIfTI offers a choice of volume
            _upload(page, files["4d"], "Current upload: NIfTI image, 2 volumes")
            seen["frame_choice"] = page.get_by_text("Volume of the 4D file").count()

            # 6: plain messages
            messages = {}
            for name, expect in (("oversize", "too large"), ("empty", "The file is empty"),
                                 ("not_dicom", "not a DICOM image"), ("truncated", "incomplete or damaged")):
                _upload(page, files[name], expect)
                messages[name] = _alerts(page, "Error")
                html = page.content()
                seen[f"name_in_html_{name}"] = files[name].stem in html
                seen[f"forbidden_{name}"] = [f for f in FORBIDDEN if f in _main_text(page)]
            seen["messages"] = messages
            page.screenshot(path=str(shots / "6-messages.png"), full_page=True)
            seen["exceptions"] = page.locator("[data-testid=stException]").count()
        finally:
            browser.close()


def _files(tmp: Path, browser_data) -> dict[str, Path]:
    from medvl.index import CaseIndex

    index = CaseIndex.open(browser_data.index_dir)
    indexed = Path(index.get(index.study_ids()[-1]).image_path)
    index.close()
    files = {
        "named": tmp / "Doe_Jane_19700101.dcm",  # exports often carry the patient's name
        "ct": tmp / "Roe_Richard_ct.dcm",
        "mr": tmp / "mr_slice.dcm",
        "volume": tmp / "brain.nii",
        "4d": tmp / "dynamic.nii.gz",
        "oversize": tmp / "Smith_Anna_big.dcm",
        "empty": tmp / "Empty_Patient.dcm",
        "not_dicom": tmp / "Notes_Patient.dcm",
        "truncated": tmp / "Cut_Patient.dcm",
    }
    shutil.copyfile(indexed, files["named"])
    shutil.copyfile(get_testdata_file("CT_small.dcm", download=False), files["ct"])
    shutil.copyfile(get_testdata_file("MR_small.dcm", download=False), files["mr"])
    shutil.copyfile(NIB_DATA / "anatomical.nii", files["volume"])
    shutil.copyfile(NIB_DATA / "example4d.nii.gz", files["4d"])
    files["oversize"].write_bytes(b"\0" * (3 * 1024 * 1024))
    files["empty"].write_bytes(b"")
    files["not_dicom"].write_bytes(b"these are notes, not an image " * 20)
    files["truncated"].write_bytes(Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()[:20000])
    return files


def test_a_radiologist_s_walk_through_the_viewer(browser_data, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium to run the browser test)")
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    files = _files(tmp_path, browser_data)
    seen: dict = {}
    t0 = time.monotonic()
    # served by the `medvl viewer` command line, without --model (the index records it)
    with streamlit_server(browser_data.index_dir, None, tmp_path / "streamlit.log", max_upload_mb=2) as url:
        seen["server_up_s"] = round(time.monotonic() - t0, 2)
        try:
            walk(url, files, ARTIFACTS, seen)
        finally:
            (ARTIFACTS / "walk.json").write_text(json.dumps(seen, indent=1, default=str))
    # 7: landing line, case facts, reading order, paging, open as query
    assert seen["landing"] and seen["deploy_button"] == 0
    assert "view · Labels" in seen["case_caption"]
    assert len(seen["reading_order"]) >= 3 and seen["reading_order"] == sorted(seen["reading_order"])
    assert seen["page_2"] == 1
    assert seen["opened"][1] == 1, seen["opened"]
    # 1: scores, provenance
    import re

    header = " ".join(seen["score_header"])
    assert ("Percentile among indexed cases" in header) != ("Probability" in header), header
    one_format = r"\d{1,3}(st|nd|rd|th)" if "Percentile" in header else r"\d{1,3}%"
    assert seen["score_values"] and all(re.fullmatch(one_format, v.strip()) for v in seen["score_values"])
    assert seen["model_caption"] == "Model: tiny-clip-test · source: example/tiny-clip · licence: MIT"
    # 3 + 4: highlights state a left effusion and nothing else; heatmap of the query's text
    from medvl.data.assertions import find_assertions, supports

    query = find_assertions("left pleural effusion")
    assert all(supports(query, find_assertions(m)) for m in seen["text_marks"]), seen["text_marks"]
    assert seen["heat_phrase"] == "left pleural effusion" and seen["colour_bar"] >= 1
    # 4: the page paints the library's map where the library put it: the canvas's hottest
    # pixel is the reference layer's (same size, same place, inferno's top colour, alpha
    # opacity x 255), so no flip or transpose happens between server and screen
    import numpy as np

    from medvl.index import CaseIndex
    from medvl_viewer import render
    from medvl_viewer.library import LibraryBackend

    index = CaseIndex.open(browser_data.index_dir)
    path = Path(index.get(seen["best_match"]).image_path)
    index.close()
    heat = LibraryBackend(browser_data.index_dir, browser_data.model_dir).heatmap(path, "left pleural effusion")
    layer = render.heat_layer(heat.array, tuple(seen["image_size"]))
    # the alpha the painter must give each pixel: opacity x clip((h - floor) / (1 - floor)), rounded
    alpha = np.floor(255 * render.DEFAULT_OPACITY * np.clip((layer / 255 - 0.2) / 0.8, 0, 1) + 0.5)
    y, x = np.unravel_index(int(np.argmax(alpha)), layer.shape)  # the first of the hottest, as the page's scan
    canvas = seen["canvas"]
    assert canvas["display"] == "block" and (canvas["h"], canvas["w"]) == layer.shape
    assert (canvas["y"], canvas["x"]) == (y, x) and canvas["alpha"] == alpha.max()
    top = np.rint(render.colormap_lut()[layer[y, x]] * 255)
    # canvases store premultiplied alpha: colours read back may be off by a unit or two
    assert np.abs(np.asarray(canvas["rgb"]) - top).max() <= 3, (canvas["rgb"], top)
    assert seen["reranked_note"] == 1
    assert len(seen["nonsense_warning"]) == 1 and "no words with the training reports" in seen["nonsense_warning"][0]
    assert seen["nonsense_marks"] == []
    # 6 + 5: upload name off the page; the upload survives a mode switch
    assert seen["upload_name_in_html"] is False and seen["upload_current"].startswith("Current upload: DICOM file")
    assert seen["upload_kept"] == 1
    # 2: a CT slice and an MR slice against a radiograph index: one warning each, no scores
    for name, modality in (("ct", "CT"), ("mr", "MR")):
        # the model's own guard (modality against its training profile) or the index's
        assert len(seen[f"warning_{name}"]) == 1 and f"{modality} image" in seen[f"warning_{name}"][0]
        assert seen[f"scores_withheld_{name}"] == 1
    # 5: volume: one message, wheel and keys move the slice, z in mm; 4D: a volume choice
    assert len(seen["volume_info"]) == 1 and seen["volume_errors"] == []
    before, wheel, keys = seen["slices"]
    n_before = int(before.split()[1])
    assert int(wheel.split()[1]) == n_before + 1 and int(keys.split()[1]) == n_before
    assert " mm" in before and "z = " in keys
    assert seen["frame_choice"] == 1
    # 6: one plain message per bad file, no names, paths or tag numbers
    expected = {"oversize": "The file is too large for this viewer (at most 2 MiB).",
                "empty": "The file is empty.", "not_dicom": "This file is not a DICOM image",
                "truncated": "The uploaded file is incomplete or damaged"}
    for name, start in expected.items():
        assert len(seen["messages"][name]) == 1 and seen["messages"][name][0].startswith(start), seen["messages"]
        assert seen[f"name_in_html_{name}"] is False and seen[f"forbidden_{name}"] == []
    assert seen["exceptions"] == 0
    for shot in ("1-case.png", "2-text-query.png", "3-upload.png", "4-unlike-index-ct.png", "5-volume.png",
                 "6-messages.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000

"""The viewer in a real headless Chromium: text query, image query, images render.

The server is started with the ``medvl viewer`` command line (``medvl_viewer.command``).

Screenshots are written to ``test-artifacts/viewer/`` at the repo root (gitignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from viewer_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "viewer"
WAIT_MS = 45_000

pytestmark = pytest.mark.browser


def _rendered_images(page) -> int:
    """Images on the page that finished loading with real pixels."""
    return page.evaluate(
        "Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


def _wait_images(page, n: int) -> None:
    page.wait_for_function(
        "n => Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= n",
        arg=n,
        timeout=WAIT_MS,
    )


def _wait_done(page, n_results: int) -> None:
    """Wait until a query's page is complete: the last result, all images, no stale element.

    Streamlit draws a rerun progressively and marks old elements ``data-stale="true"``
    meanwhile, so the screenshot waits for the last ranked hit, one image per hit plus
    the query image, and no stale element.
    """
    page.get_by_text(f"#{n_results} ·").first.wait_for()
    _wait_images(page, n_results + 1)
    page.wait_for_function(
        "() => !document.querySelector('[data-stale=\"true\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')",
        timeout=WAIT_MS,
    )


def run_browser_session(url: str, upload: Path, text_query: str, shots: Path) -> dict[str, int]:
    """Drive the viewer at ``url``; return how many images rendered in each query."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.get_by_text("Research use only").first.wait_for()
            counts["deploy_button"] = page.get_by_text("Deploy", exact=True).count()

            # default mode: a case from the index with its similar cases
            page.get_by_text("similar cases").first.wait_for()
            _wait_done(page, 5)
            counts["case"] = _rendered_images(page)
            page.screenshot(path=str(shots / "1-case.png"), full_page=True)

            # free text
            page.get_by_text("Free text", exact=True).click()
            box = page.get_by_label("Findings to search for")
            box.fill(text_query)
            box.press("Enter")
            page.get_by_text("Best match:").first.wait_for()
            _wait_done(page, 5)
            counts["text"] = _rendered_images(page)
            page.screenshot(path=str(shots / "2-text-query.png"), full_page=True)

            # uploaded image
            page.get_by_text("Uploaded image", exact=True).click()
            page.locator("input[type=file]").set_input_files(str(upload))
            page.get_by_role("heading", name="Uploaded image").wait_for()
            _wait_done(page, 5)
            counts["upload"] = _rendered_images(page)
            page.screenshot(path=str(shots / "3-image-query.png"), full_page=True)
            # exported file names often carry the patient's name: the page must not show it
            name = page.get_by_text(upload.stem)
            counts["upload_name_visible"] = sum(name.nth(i).is_visible() for i in range(name.count()))
            counts["errors"] = page.locator("[data-testid=stAlertContentError]").count()
        finally:
            browser.close()
    return counts


def test_viewer_in_headless_chromium(viewer_target, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium to run the browser test)")
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    index_dir, _model_dir, source, text_query = viewer_target
    upload = tmp_path / "Doe_Jane_chest.dcm"  # an identifying name, as exports often have
    shutil.copyfile(source, upload)
    # served by the `medvl viewer` command line, without --model (the index records it)
    with streamlit_server(index_dir, None, tmp_path / "streamlit.log") as url:
        counts = run_browser_session(url, upload, text_query, ARTIFACTS)
    assert counts["errors"] == 0
    # the query (or best-match) image + one thumbnail per hit, in each mode
    assert counts == {"case": 6, "text": 6, "upload": 6, "errors": 0, "upload_name_visible": 0, "deploy_button": 0}
    for name in ("1-case.png", "2-text-query.png", "3-image-query.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000

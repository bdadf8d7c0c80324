"""Viewer speed as a user meets it: cold start to first image, and server time per interaction.

A real ``medvl viewer`` server on the demo index (``make demo``), driven by headless
Chromium (Playwright). The server runs with ``MEDVL_VIEWER_TIMING=1``, so the page and the
image fragment print their own server time; each interaction is timed by the lines it
produced (``image`` alone = a fragment rerun; ``page`` = a full rerun) and, as seen from
the browser, from the action to the end of the rerun.

* cold start: a fresh server process (after install: byte-code compiled, files in the
  OS cache) to the first image in the browser, and to the first results (model loaded
  in the background meanwhile); two trials.
* window preset, level, heatmap opacity, slice (mouse wheel over a CT volume), and window
  level and heatmap opacity on a real detector-sized chest CR (pydicom-data's RG1_UNCR,
  1955 x 1841): each five times; the baseline in the same process is a full page rerun
  (the number of results, 5 <-> 20, thumbnails cached after the first time).

Run (after ``make demo``; ~3 min)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/viewer/bench_interactions.py [--demo runs/demo]

writes ``benchmarks/viewer/interactions.json`` and ``interactions.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "apps"))

from viewer_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

WAIT_MS = 120_000
TIMING = re.compile(r"medvl-viewer-timing (page|image) ([0-9.]+)")
REPEAT = 5


class Timings:
    """New ``medvl-viewer-timing`` lines of the server log since the last call."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0

    def take(self) -> list[tuple[str, float]]:
        text = self.log.read_text(errors="replace")
        new, self.offset = text[self.offset:], len(text)
        # Lines of other loggers may interleave with ours: find the marks anywhere.
        return [(m.group(1), float(m.group(2))) for m in TIMING.finditer(new)]


def settle(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('[data-stale=\"true\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=WAIT_MS)


def interaction(page, timings: Timings, action, expect=None) -> dict:
    """Run ``action``; return the server time of the rerun it caused and the browser-seen latency.

    The server time is read from the timing lines the rerun printed (``image`` alone: a
    fragment rerun; ``page``: a full one, whose time includes the image's); the browser
    latency runs from the action to the end of the rerun on the page.
    """
    settle(page)
    time.sleep(0.5)
    timings.take()  # anything left from before
    t0 = time.perf_counter()
    action()
    if expect is not None:
        expect()
    lines: list[tuple[str, float]] = []
    deadline = time.perf_counter() + 30
    while not lines and time.perf_counter() < deadline:  # until the server finished the rerun
        time.sleep(0.02)
        lines = timings.take()
    settle(page)
    seen = time.perf_counter() - t0
    time.sleep(0.5)
    lines += timings.take()
    kinds = sorted({w for w, _ in lines})
    which = "page" if "page" in kinds else "image"
    return {"kinds": kinds, "server_ms": round(sum(ms for w, ms in lines if w == which), 1),
            "browser_s": round(seen, 3)}


def summary(runs: list[dict]) -> dict:
    server = [r["server_ms"] for r in runs]
    return {"runs": runs, "fragment_only": all(r["kinds"] == ["image"] for r in runs),
            "server_ms_median": round(statistics.median(server), 1), "server_ms_max": round(max(server), 1),
            "browser_s_median": round(statistics.median(r["browser_s"] for r in runs), 3)}


def cold_start(index: Path, log: Path) -> dict:
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    with streamlit_server(index, None, log, env={"MEDVL_VIEWER_TIMING": "1"}, start_timeout=120) as url:
        up = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.get_by_test_id("medvl-image").first.wait_for(timeout=WAIT_MS)
            first = time.perf_counter() - t0
            page.get_by_text("#5 ·").first.wait_for(timeout=WAIT_MS)
            results = time.perf_counter() - t0
            browser.close()
    return {"server_up_s": round(up, 2), "first_image_s": round(first, 2), "first_results_s": round(results, 2)}


def interactions(index: Path, volume: Path, log: Path) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with streamlit_server(index, None, log, env={"MEDVL_VIEWER_TIMING": "1"}, start_timeout=120) as url:
        timings = Timings(log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("#5 ·").first.wait_for()
            settle(page)

            def choose_window(i: int):
                def act():
                    page.get_by_label("Window").first.click()
                    page.get_by_role("option").nth(i % 2).click()
                return act

            out["window_preset"] = summary([interaction(page, timings, choose_window(i + 1)) for i in range(REPEAT)])

            def level(v: int):
                def act():
                    box = page.get_by_label("Level").first
                    box.fill(str(v))
                    box.press("Enter")
                return act

            out["window_level"] = summary([interaction(page, timings, level(400 + 50 * i)) for i in range(REPEAT)])

            def k(value: int):
                def act():
                    slider = page.get_by_role("slider", name="Number of results")
                    slider.focus()
                    for _ in range(abs(value)):
                        slider.press("ArrowRight" if value > 0 else "ArrowLeft")
                return act

            out["results_5_to_20_first"] = interaction(page, timings, k(15), lambda: page.get_by_text("#20 ·").first
                                                       .wait_for())
            out["full_page_rerun_baseline"] = summary(
                [interaction(page, timings, k(-1 if i % 2 == 0 else 1)) for i in range(REPEAT)])

            # opacity of a heatmap: text mode, the best match's image
            page.get_by_text("Free text", exact=True).click()
            box = page.get_by_label("Findings to search for")
            box.fill("left pleural effusion")
            box.press("Enter")
            page.get_by_text("Best match:").first.wait_for()
            settle(page)

            def opacity(i: int):
                def act():
                    slider = page.get_by_role("slider", name="Opacity").first
                    slider.focus()
                    slider.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                return act

            out["heatmap_opacity"] = summary([interaction(page, timings, opacity(i)) for i in range(REPEAT)])

            # slices of a CT volume: the mouse wheel over the image
            page.get_by_text("Uploaded image", exact=True).click()
            page.get_by_test_id("stFileUploaderDropzoneInput").last.set_input_files(str(volume))
            page.get_by_text("Current upload").first.wait_for()
            page.get_by_test_id("medvl-image").first.wait_for()
            settle(page)

            def wheel(i: int):
                def act():
                    page.get_by_test_id("medvl-image").first.hover()
                    page.mouse.wheel(0, 120 if i % 2 == 0 else -120)
                return act

            out["slice_wheel"] = summary([interaction(page, timings, wheel(i)) for i in range(REPEAT)])

            # a real detector-sized radiograph (pydicom-data's PA chest CR, 1955 x 1841)
            from pydicom.data import get_testdata_file

            page.get_by_test_id("stFileUploaderDropzoneInput").last.set_input_files(
                get_testdata_file("RG1_UNCR.dcm", download=False))
            page.get_by_text("Size: 1955 x 1841").first.wait_for()
            settle(page)
            out["window_level_real_cr"] = summary([interaction(page, timings, level(1500 + 100 * i))
                                                   for i in range(REPEAT)])
            out["heatmap_opacity_real_cr"] = None
            box = page.get_by_label("Heatmap phrase").first
            box.fill("left pleural effusion")
            box.press("Enter")
            page.get_by_test_id("heat-colour-bar").first.wait_for()
            settle(page)
            out["heatmap_opacity_real_cr"] = summary([interaction(page, timings, opacity(i)) for i in range(REPEAT)])
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="the `make demo` output folder")
    args = parser.parse_args(argv)
    demo = Path(args.demo).resolve()
    index = demo / "index"
    volume = sorted((demo / "corpus" / "ct").glob("*.nii.gz"))[0]
    scratch = HERE / "scratch"
    scratch.mkdir(exist_ok=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict = {"cold_start": [cold_start(index, scratch / f"cold{i}.log") for i in range(2)]}
    result.update(interactions(index, volume, scratch / "interactions.log"))
    result["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                         "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_start": load_start,
                         "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
    base = result["full_page_rerun_baseline"]["server_ms_median"]
    for name in ("window_preset", "window_level", "heatmap_opacity", "slice_wheel", "window_level_real_cr",
                 "heatmap_opacity_real_cr"):
        result[name]["vs_full_page_rerun"] = round(result[name]["server_ms_median"] / max(base, 1e-9), 3)
    (HERE / "interactions.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# Viewer speed: cold start and server time per interaction", "",
          f"Demo index ({demo.name}), real model, headless Chromium. Machine: {result['machine']}.", "",
          "| cold start | server up | first image | first results |", "|---|---|---|---|"]
    for i, c in enumerate(result["cold_start"], 1):
        md.append(f"| trial {i} | {c['server_up_s']} s | {c['first_image_s']} s | {c['first_results_s']} s |")
    md += ["", "| interaction (x5) | rerun | server ms (median / max) | vs full-page rerun | browser s (median) |",
           "|---|---|---|---|---|"]
    for name in ("window_preset", "window_level", "heatmap_opacity", "slice_wheel", "window_level_real_cr",
                 "heatmap_opacity_real_cr", "full_page_rerun_baseline"):
        r = result[name]
        kind = "image fragment" if r["fragment_only"] else "page"
        ratio = r.get("vs_full_page_rerun", 1.0)
        md.append(f"| {name} | {kind} | {r['server_ms_median']} / {r['server_ms_max']} | {ratio} | "
                  f"{r['browser_s_median']} |")
    f = result["results_5_to_20_first"]
    md += ["", f"Number of results 5 -> 20 (first time, 15 thumbnails made): {f['server_ms']} ms server, "
               f"{f['browser_s']} s in the browser."]
    (HERE / "interactions.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Viewer speed: upload staging, display conversions and page reruns, against baselines.

Each figure is compared with a baseline measured in the same process, so the ratios
carry over between machines:

* staging a DICOM-series zip (checks + generated names + size accounting) vs a plain
  ``ZipFile.extractall`` of the same archive, time and peak Python memory (members are
  streamed in 1 MiB chunks, never held whole);
* windowing + heatmap overlay + thumbnail of a radiograph-sized image vs windowing alone,
  at full resolution and as the viewer does it (downscaled to display size first);
* a page rerun after moving the heatmap opacity slider vs the first run (AppTest, fake
  library, so only the viewer's own work is timed);
* the real backend on a tiny synthetic pipeline (untrained tiny model, 40 radiographs):
  model+index load, first vs repeated query (the per-query memo), zero-shot, heatmap,
  sentence scores, and a page rerun vs the first page run.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/viewer/bench_viewer.py``; writes
``benchmarks/viewer/results.json``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "tests" / "apps"):
    sys.path.insert(0, str(p))

from medvl_viewer import render
from medvl_viewer.uploads import stage_upload


def best_of(fn, repeat: int = 5) -> float:
    """Smallest wall time of ``repeat`` calls, in seconds (least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_mib(fn) -> float:
    """Peak Python heap allocation of one call, in MiB (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_zip(n_slices: int = 200) -> dict[str, float]:
    from pydicom.data import get_testdata_file

    slice_bytes = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n_slices):
            zf.writestr(f"study/series/IM{i:04d}", slice_bytes)
    data = buf.getvalue()

    def ours() -> None:
        with tempfile.TemporaryDirectory() as d:
            stage_upload("series.zip", len(data), lambda: data, d)

    def baseline() -> None:
        with tempfile.TemporaryDirectory() as d, zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(d)

    t_ours, t_base = best_of(ours), best_of(baseline)
    m_ours, m_base = peak_mib(ours), peak_mib(baseline)
    return {
        "stage_zip_peak_python_mib": round(m_ours, 2),
        "extractall_peak_python_mib": round(m_base, 2),
        "zip_slices": n_slices,
        "zip_mib": round(len(data) / 2**20, 2),
        "stage_zip_s": round(t_ours, 4),
        "extractall_s": round(t_base, 4),
        "stage_zip_vs_extractall": round(t_ours / t_base, 2),
    }


def bench_render(size: int = 2048) -> dict[str, float]:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 300, (size, size)).astype(np.float32)
    heat = rng.random((16, 16)).astype(np.float32)

    def window_only() -> None:
        render.window_to_uint8(image, 40, 400)

    def full() -> None:
        grey = render.window_to_uint8(image, 40, 400)
        render.overlay_heatmap(grey, heat, 0.5)
        render.thumbnail(grey)

    def viewer() -> None:  # what the image panel does: downscale to display size first
        grey = render.thumbnail(render.window_to_uint8(image, 40, 400), render.DISPLAY_MAX_SIDE)
        render.overlay_heatmap(grey, heat, 0.5)
        render.thumbnail(grey)

    t_win, t_full, t_viewer = best_of(window_only), best_of(full), best_of(viewer)
    return {
        "render_size": size,
        "window_s": round(t_win, 4),
        "full_res_window_overlay_thumbnail_s": round(t_full, 4),
        "viewer_window_downscale_overlay_thumbnail_s": round(t_viewer, 4),
        "full_res_pipeline_vs_window": round(t_full / t_win, 2),
        "viewer_pipeline_vs_window": round(t_viewer / t_win, 2),
    }


def bench_page() -> dict[str, float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest
    from viewer_fakes import FakeBackend

    from medvl_viewer import backend

    real_open = backend.open_backend
    backend.open_backend = lambda index_dir, model_dir: FakeBackend()
    os.environ["MEDVL_VIEWER_INDEX"] = os.environ["MEDVL_VIEWER_MODEL"] = "unused"
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO / "apps" / "viewer.py"), default_timeout=60)
    t0 = time.perf_counter()
    at.run()
    t_first = time.perf_counter() - t0
    at.sidebar.radio(key="mode").set_value("Free text").run()
    at.sidebar.text_input(key="query_text").set_value("left pleural effusion").run()
    values = iter([0.1, 0.9] * 10)

    def rerun() -> None:
        at.slider(key="opacity-text-S000").set_value(next(values)).run()

    t_rerun = best_of(rerun)
    backend.open_backend = real_open
    return {
        "page_first_run_s": round(t_first, 3),
        "page_rerun_s": round(t_rerun, 3),
        "rerun_vs_first_run": round(t_rerun / t_first, 2),
    }


def bench_real(n_cxr: int = 40) -> dict[str, float]:
    """The real backend on a tiny synthetic pipeline: load once, then per-query costs.

    Baselines: a repeated query against the backend's per-query memo, and a page rerun
    (slider moved) against the first page run that loads the model and index.
    """
    import shutil

    import streamlit as st
    from streamlit.testing.v1 import AppTest
    from viewer_pipeline import build_viewer_data

    from medvl_viewer import backend as backend_mod
    from medvl_viewer.backend import Query

    scratch = Path(__file__).with_name("scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    data = build_viewer_data(scratch, n_cxr=n_cxr)

    t0 = time.perf_counter()  # torch and MONAI are imported by now: this is the load itself
    b = backend_mod.open_backend(data.index_dir, data.model_dir)
    t_open = time.perf_counter() - t0
    ids = b.case_ids()
    paths = [b.case(s).image_path for s in ids]

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    first = [timed(lambda p=p: b.search_image(p, 5)) for p in paths[:10]]
    again = [timed(lambda p=p: b.search_image(p, 5)) for p in paths[:10]]
    t_text = timed(lambda: b.search_text("left pleural effusion", 5))
    t_zs_first = timed(lambda: b.zero_shot(paths[0]))  # embeds the prompt set once
    t_zs = min(timed(lambda p=p: b.zero_shot(p)) for p in paths[1:6])
    t_heat = min(timed(lambda p=p: b.heatmap(p, "cardiomegaly")) for p in paths[1:6])
    reports = [b.case(s).report for s in ids[:5]]
    from medvl_viewer.render import split_sentences

    t_sent = min(timed(lambda r=r: b.sentence_scores(Query(text="effusion"), split_sentences(r))) for r in reports)

    real_open = backend_mod.open_backend
    backend_mod.open_backend = lambda index_dir, model_dir: b  # the page reuses the loaded backend
    os.environ["MEDVL_VIEWER_INDEX"] = str(data.index_dir)
    os.environ["MEDVL_VIEWER_MODEL"] = str(data.model_dir)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO / "apps" / "viewer.py"), default_timeout=120)
    t_page = timed(at.run)
    study = ids[0]
    values = iter([0.1, 0.9] * 10)
    t_rerun = min(timed(lambda: at.slider(key=f"opacity-case-{study}").set_value(next(values)).run()) for _ in range(5))
    backend_mod.open_backend = real_open
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "real_cases": len(ids),
        "real_open_backend_s": round(t_open, 3),
        "real_search_image_first_s": round(float(np.median(first)), 4),
        "real_search_image_repeat_s": round(float(np.median(again)), 6),
        "real_search_image_repeat_vs_first": round(float(np.median(again) / np.median(first)), 4),
        "real_search_text_s": round(t_text, 4),
        "real_zero_shot_first_s": round(t_zs_first, 4),
        "real_zero_shot_s": round(t_zs, 4),
        "real_heatmap_s": round(t_heat, 4),
        "real_sentence_scores_s": round(t_sent, 4),
        "real_page_first_run_s": round(t_page, 3),
        "real_page_rerun_s": round(t_rerun, 3),
        "real_rerun_vs_first_run": round(t_rerun / t_page, 3),
    }


def main() -> None:
    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            # other engineers share the cores: absolute times swing with load, ratios less so
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        **bench_zip(),
        **bench_render(),
        **bench_page(),
        **bench_real(),
    }
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Viewer speed: upload staging, display conversions and page reruns, against baselines.

Each figure is compared with a baseline measured in the same process, so the ratios
carry over between machines:

* staging a DICOM-series zip (checks + generated names + size accounting) vs a plain
  ``ZipFile.extractall`` of the same archive;
* windowing + heatmap overlay + thumbnail of a radiograph-sized image vs windowing alone,
  at full resolution and as the viewer does it (downscaled to display size first);
* a page rerun after moving the heatmap opacity slider vs the first run (AppTest, fake
  library, so only the viewer's own work is timed).

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

from apps.viewer_lib import render  # noqa: E402
from apps.viewer_lib.uploads import stage_upload  # noqa: E402


def best_of(fn, repeat: int = 5) -> float:
    """Smallest wall time of ``repeat`` calls, in seconds (least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
    return {
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

    from apps.viewer_lib import backend

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
    return {
        "page_first_run_s": round(t_first, 3),
        "page_rerun_s": round(t_rerun, 3),
        "rerun_vs_first_run": round(t_rerun / t_first, 2),
    }


def main() -> None:
    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        **bench_zip(),
        **bench_render(),
        **bench_page(),
    }
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Viewer speed: upload staging, display conversions and page reruns, against baselines.

Each figure is compared with a baseline measured in the same process, so the ratios
carry over between machines:

* staging a DICOM-series zip (checks + generated names + size accounting) vs a plain
  ``ZipFile.extractall`` of the same archive, time and peak Python memory (members are
  streamed in 1 MiB chunks, never held whole);
* windowing + heatmap overlay + thumbnail of a radiograph-sized image vs windowing alone,
  at full resolution, and what the image panel does per window change (the plane already
  shrunk to display size: window and PNG encoding) and per heatmap phrase (the 8-bit
  layer the page paints; an opacity change costs the server nothing).

Server time per interaction in a real browser, and cold start, are in
``bench_interactions.py``; highlight and search quality in ``bench_quality.py``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/viewer/bench_viewer.py``; writes
``benchmarks/viewer/results.json``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

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

    plane = render.fit_plane(image, render.DISPLAY_MAX_SIDE)  # memoised per image and slice by the panel

    def viewer() -> None:  # what the image panel does per window change: window the display plane, PNG
        from medvl_viewer.slice_view import png_data_uri

        png_data_uri(render.window_to_uint8(plane, 40, 400))

    def layer() -> None:  # per heatmap phrase: the 8-bit layer the page paints (opacity changes: nothing)
        from medvl_viewer.slice_view import png_data_uri

        png_data_uri(render.heat_layer(heat, plane.shape))

    t_layer = best_of(layer)
    t_win, t_full, t_viewer = best_of(window_only), best_of(full), best_of(viewer)
    return {
        "render_size": size,
        "window_s": round(t_win, 4),
        "full_res_window_overlay_thumbnail_s": round(t_full, 4),
        "viewer_window_change_s": round(t_viewer, 4),
        "viewer_heat_layer_s": round(t_layer, 4),
        "full_res_pipeline_vs_window": round(t_full / t_win, 2),
        "viewer_pipeline_vs_window": round(t_viewer / t_win, 2),
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
    }
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Generation speed of the synthetic corpus (studies per second), 2D and 3D.

Runs a few hundred radiographs (not 10,000: the machine is shared) and extrapolates
the time for 10,000 2D studies. Each figure is compared with a baseline measured in
the same process: writing an uncompressed DICOM of the same size from a constant
array with pydicom (the I/O floor any generator pays), so the ratio says how much
the phantom, masks and reports cost on top of that.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.synth.bench_speed [--n-cxr 200] [--n-ct 10] [--workers 1]

Writes ``benchmarks/synth/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _blank_dicom_rate(size: int, n: int, folder: Path) -> float:
    """Studies/s for writing a constant-image DICOM (the baseline)."""
    from medvl.data.synth.writers import write_radiograph

    rng = np.random.default_rng(0)
    img = np.full((size, size), 0.5, dtype=np.float32)
    t0 = time.perf_counter()
    for i in range(n):
        write_radiograph(folder / f"b{i}.dcm", img, rng, patient_id="SYN-P000001", study_number=1,
                         modality="DX", view="PA", spacing=0.7, compression="none")
    return n / (time.perf_counter() - t0)


def _stage_times(size: int, n: int, folder: Path) -> dict[str, float]:
    """Milliseconds per radiograph for render, DICOM write, masks and report."""
    from medvl.data.synth.config import SynthConfig
    from medvl.data.synth.cxr import render_cxr, sample_anatomy
    from medvl.data.synth.plan import plan_corpus
    from medvl.data.synth.text import write_report
    from medvl.data.synth.writers import write_png_mask, write_radiograph

    plans = plan_corpus(SynthConfig(n_cxr=n, n_ct=0, seed=1, image_size=size))
    t = {"render": 0.0, "dicom": 0.0, "masks": 0.0, "report": 0.0}
    for p in plans:
        t0 = time.perf_counter()
        r = render_cxr(sample_anatomy(p.anatomy_seed), p.findings, size=size, spacing=0.7 * 512 / size,
                       seed=p.render_seed, view=p.view)
        t1 = time.perf_counter()
        write_radiograph(folder / f"{p.study_id}.dcm", r.attenuation, np.random.default_rng(p.render_seed),
                         patient_id=p.patient_id, study_number=1, modality=p.modality, view=p.view,
                         spacing=0.7, compression=p.compression)
        t2 = time.perf_counter()
        for name, m in r.masks.items():
            write_png_mask(folder / f"{p.study_id}_{name}.png", m)
        t3 = time.perf_counter()
        write_report(p, np.random.default_rng(p.render_seed))
        t4 = time.perf_counter()
        t["render"] += t1 - t0
        t["dicom"] += t2 - t1
        t["masks"] += t3 - t2
        t["report"] += t4 - t3
    return {k: round(1000 * v / n, 2) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cxr", type=int, default=200)
    parser.add_argument("--n-ct", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()

    from medvl.data.synth import generate_corpus

    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        # Warm-up: imports and the texture bank are one-off costs, not per-study.
        generate_corpus(tmp / "warm", n_cxr=2, n_ct=1, seed=0, image_size=args.image_size)
        (tmp / "blank").mkdir()
        baseline = _blank_dicom_rate(args.image_size, 50, tmp / "blank")

        t0, c0 = time.perf_counter(), time.process_time()
        generate_corpus(tmp / "cxr", n_cxr=args.n_cxr, n_ct=0, seed=1, image_size=args.image_size,
                        workers=args.workers)
        cxr_s, cxr_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        generate_corpus(tmp / "ct", n_cxr=0, n_ct=args.n_ct, seed=1, workers=args.workers)
        ct_s, ct_cpu = time.perf_counter() - t0, time.process_time() - c0
        (tmp / "stages").mkdir()
        stages = _stage_times(args.image_size, min(50, args.n_cxr), tmp / "stages")
        disk_mb = sum(p.stat().st_size for p in (tmp / "cxr").rglob("*") if p.is_file()) / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cxr_rate = args.n_cxr / cxr_s
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "settings": {"n_cxr": args.n_cxr, "n_ct": args.n_ct, "image_size": args.image_size,
                     "ct_size": [96, 96, 64], "workers": args.workers},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cxr_studies_per_s": round(cxr_rate, 2),
        "ct_studies_per_s": round(args.n_ct / ct_s, 3),
        # CPU seconds of this process (workers=1 only): the rate a free core would give
        # on a machine shared with other jobs.
        "cxr_studies_per_cpu_s": round(args.n_cxr / cxr_cpu, 2) if args.workers == 1 else None,
        "ct_studies_per_cpu_s": round(args.n_ct / ct_cpu, 3) if args.workers == 1 else None,
        "cxr_ms_per_study_by_stage": stages,
        "baseline_blank_dicom_per_s": round(baseline, 1),
        "ratio_full_study_vs_blank_dicom": round(baseline / cxr_rate, 2),
        "cxr_disk_mb_per_study": round(disk_mb / args.n_cxr, 3),
        "extrapolated_10k_cxr_minutes": round(10_000 / cxr_rate / 60, 1),
        "extrapolated_10k_cxr_minutes_one_free_core": (
            round(10_000 * cxr_cpu / args.n_cxr / 60, 1) if args.workers == 1 else None),
        "extrapolated_10k_cxr_minutes_note": f"extrapolated from {args.n_cxr} studies, not measured on 10,000",
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

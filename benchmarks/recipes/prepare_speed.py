"""How long does `medvl prepare` take on a corpus of MIMIC-CXR's size?

Generates a MIMIC-CXR-JPG-shaped tree (placeholder image files, real report text
files and real gzipped CSVs) with MIMIC's counts: 65,379 patients, 227,835 studies,
377,110 images; then times the recipe (tables + 227k report files) with and without
``--check-files`` (a stat per image). Usage::

    .venv/bin/python -m benchmarks.recipes.prepare_speed [--scale 1.0] [--keep DIR]

Results are appended to benchmarks/recipes/results.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from medvl.recipes import PrepareOptions, prepare
from medvl.recipes.testing import write_mimic_tree

PATIENTS, STUDIES, IMAGES = 65_379, 227_835, 377_110


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MIMIC-CXR's size")
    ap.add_argument("--keep", default=None, help="reuse/keep the generated tree here")
    args = ap.parse_args()
    patients = max(3, int(PATIENTS * args.scale))
    # 3.485 studies per patient, 1.655 images per study -> use 3 and 2 with a remainder spread
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mimic-bench-"))
    t0 = time.perf_counter()
    if not (root / "mimic-cxr-2.0.0-split.csv.gz").exists():
        write_mimic_tree(root, n_patients=patients, studies_per_patient=round(STUDIES / PATIENTS),
                         images_per_study=round(IMAGES / STUDIES), jpg=True, real_images=False)
    t_gen = time.perf_counter() - t0
    n_images = sum(1 for _ in (root / "files").rglob("*.jpg"))
    out = root / "manifest.jsonl"
    figures = {}
    for check in (False, True):
        t0 = time.perf_counter()
        n = prepare("mimic-cxr-jpg", root, out, PrepareOptions(views=None, check_files=check))
        figures[check] = (n, time.perf_counter() - t0)
    line = (
        f"| {datetime.now(timezone.utc):%Y-%m-%d} | {platform.machine()} {os.cpu_count()} cores | "
        f"{patients} patients, {n_images} images | {figures[False][1]:.1f} s ({figures[False][0] / figures[False][1]:.0f} rows/s) | "
        f"{figures[True][1]:.1f} s | tree generated in {t_gen:.0f} s |"
    )
    print(line)
    res = Path(__file__).with_name("results.md")
    if not res.exists():
        res.write_text("# medvl prepare on a MIMIC-CXR-sized tree\n\n| date | machine | tree | prepare | prepare --check-files | note |\n|---|---|---|---|---|---|\n")
    with res.open("a") as fh:
        fh.write(line + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Ingest throughput from a local Orthanc: medvl's ingest against a plain dicomweb-client loop.

Baseline: what a user writes with dicomweb-client alone: for each study, list its series
and ``retrieve_series`` each, writing the datasets as received (no de-identification,
no cache, one request at a time). medvl: ``Ingester`` (series choice, per-instance
WADO-RS, checks, de-identification, atomic writes, cache) with 1 and with 4 workers.
Both run in this process against the same server, alternating, twice; ratios are the
figures to read (the machine is shared). Writes results.json / results.md next to it.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/pacs/bench_ingest.py [--cxr 24 --ct 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def baseline(url: str, out: Path) -> int:
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(url)
    n = 0
    for study in client.search_for_studies():
        uid = study["0020000D"]["Value"][0]
        for series in client.search_for_series(uid):
            suid = series["0020000E"]["Value"][0]
            for ds in client.retrieve_series(uid, suid, media_types=(("application/dicom", "*"),)):
                d = out / uid / suid
                d.mkdir(parents=True, exist_ok=True)
                ds.save_as(d / f"{ds.SOPInstanceUID}.dcm")
                n += 1
    return n


def medvl_ingest(url: str, out: Path, workers: int, stream: bool = True) -> int:
    from medvl.pacs.cache import IngestCache
    from medvl.pacs.client import DicomWebSource
    from medvl.pacs.config import PacsConfig
    from medvl.pacs.ingest import Ingester, IngestOptions

    src = DicomWebSource(PacsConfig(url=url, workers=workers))
    studies = src.search_studies()
    cache = IngestCache(out, out / ".state")
    result = Ingester(src, out, cache, IngestOptions(stream=stream)).run(studies, progress=False)
    cache.close()
    s = result.summary()
    assert s["skipped"] == 0, s
    return int(s["instances_fetched"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxr", type=int, default=24)
    ap.add_argument("--ct", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from medvl.atomic import write_text_atomic
    from medvl.pacs.testing import OrthancServer, load_synthetic

    runs = ("baseline", "medvl_1", "medvl_4", "medvl_4_per_instance")
    rows: dict[str, list[float]] = {k: [] for k in runs}
    counts: dict[str, int] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medvl-bench-pacs-") as tmp, OrthancServer() as server:
        t0 = time.perf_counter()
        studies = load_synthetic(server, Path(tmp) / "data", n_cxr=args.cxr, n_ct=args.ct,
                                 image_size=args.image_size, ct_size=(128, 128, 64))
        load_s = time.perf_counter() - t0
        n_inst = sum(s.n_instances for s in studies)
        for r in range(args.rounds):
            for name, fn in (("baseline", lambda o: baseline(server.url, o)),
                             ("medvl_1", lambda o: medvl_ingest(server.url, o, 1)),
                             ("medvl_4", lambda o: medvl_ingest(server.url, o, 4)),
                             ("medvl_4_per_instance", lambda o: medvl_ingest(server.url, o, 4, stream=False))):
                out = Path(tmp) / f"{name}-{r}"
                t = time.perf_counter()
                counts[name] = fn(out)
                rows[name].append(time.perf_counter() - t)
                print(f"round {r} {name}: {counts[name]} instances in {rows[name][-1]:.2f} s", flush=True)
    best = {k: min(v) for k, v in rows.items()}
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
        "corpus": {"cxr_studies": args.cxr, "ct_studies": args.ct, "image_size": args.image_size,
                   "ct_size": [128, 128, 64], "instances_on_server": n_inst, "load_seconds": round(load_s, 1)},
        "instances": counts, "seconds": rows, "best_seconds": best,
        "instances_per_s": {k: round(counts[k] / best[k], 1) for k in best},
        "ratio_medvl4_vs_baseline": round(best["baseline"] / best["medvl_4"], 2),
        "ratio_medvl1_vs_baseline": round(best["baseline"] / best["medvl_1"], 2),
        "ratio_medvl4_per_instance_vs_baseline": round(best["baseline"] / best["medvl_4_per_instance"], 2),
        "note": "baseline fetches every series (SR included) and does not de-identify; medvl fetches the "
                "image series and the SR, de-identifies, checks and caches every instance; medvl_N streams each "
                "fresh series in one WADO-RS request, medvl_4_per_instance makes one request per instance "
                "(what a resumed series does)",
        "command": "OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/pacs/bench_ingest.py "
                   + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    write_text_atomic(HERE / "results.json", json.dumps(result, indent=2) + "\n")
    md = ["# PACS ingest throughput (local Orthanc, same process)", "",
          f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, "
          f"load {load_start[0]:.1f} at start, {result['machine']['loadavg_at_end'][0]:.1f} at end. Corpus: {args.cxr} radiographs "
          f"({args.image_size}px) + {args.ct} CT series (128x128x64), {n_inst} image instances + SRs.", "",
          "| run | instances | best s | instances/s | speed vs baseline |", "|---|---|---|---|---|"]
    for k in runs:
        md.append(f"| {k} | {counts[k]} | {best[k]:.2f} | {result['instances_per_s'][k]} | "
                  f"{best['baseline'] / best[k]:.2f}x |")
    md += ["", result["note"] + ".", "", f"Command: `{result['command']}`; every run of every round: "
           + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in rows[k]) + " s" for k in runs) + "."]
    write_text_atomic(HERE / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

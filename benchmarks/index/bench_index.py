"""Case-index benchmark: build time, query latency p50/p99 and recall@10 at 10k-1M vectors.

Vectors are unit-norm float32 rows of the model's dimension (256 by default) with
clustered structure (points scattered around ``N / 1000`` random centres, as embeddings
of a corpus cluster by finding and view), and queries are fresh draws from the same
distribution (not copies of indexed rows). For each size, in one process:

* ``numpy sort``: ``argsort(x @ q)`` per query, the naive baseline;
* ``exact``: medvl's streamed exact search (``medvl.index.vectors.exact_search``);
* ``ivf``: FAISS IVF-Flat built by ``medvl.index.vectors.build_approx`` at several
  ``nprobe`` settings, with recall@10 against exact search;
* ``hnsw``: FAISS HNSW (sizes up to ``--hnsw-max``; building it at 1M on a shared
  2-core machine takes too long to be a fair citizen);
* ``CaseIndex``: the full on-disk index (``add_embeddings``: vectors + SQLite + FAISS)
  at ``--end-to-end`` vectors, and ``search_vector`` latency including the metadata fetch.

Queries run one at a time, as a user's do. FAISS and BLAS use one thread
(``OMP_NUM_THREADS=1``) so figures do not depend on what the neighbours run.

Prints the figures and writes ``results.json`` and ``results.md`` next to this file.
Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index/bench_index.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medvl.index.vectors import ApproxParams, approx_search, build_approx, exact_search, normalize_rows

HERE = Path(__file__).resolve().parent


# Noise norm relative to the centre's. At 1.0 two points of one cluster have cosine ~0.5 and of
# different clusters ~0 +- 0.06 (neighbours come from the query's cluster, as embeddings of
# similar studies do). At 2.0 the within-cluster cosine (~0.2) is within reach of the best of
# 1M random pairs, so true neighbours scatter over the whole space: the stress case.
SPREAD = 1.0
STRESS_SPREAD = 2.0
POINTS_PER_CLUSTER = 100


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, spread: float = SPREAD) -> np.ndarray:
    """``n`` unit vectors around random ``centres`` (generated in chunks to bound memory)."""
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        c = centres[rng.integers(0, len(centres), m)]
        noise = rng.standard_normal((m, d), dtype=np.float32) * (spread / np.sqrt(d))
        out[lo : lo + m] = normalize_rows(c + noise)
    return out


def latencies(fn: Any, queries: np.ndarray) -> np.ndarray:
    """Seconds per query, one query at a time."""
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        fn(q[None])
        out[i] = time.perf_counter() - t0
    return out


def summary(lat: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "mean_ms": float(lat.mean() * 1e3), "queries": len(lat)}


def recall_at_10(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_size(n: int, d: int, n_queries: int, nprobes: list[int], hnsw_max: int, seed: int,
               spread: float = SPREAD, nlist: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((max(100, n // POINTS_PER_CLUSTER), d), dtype=np.float32))
    t0 = time.perf_counter()
    x = clustered(n, d, rng, centres, spread)
    gen_s = time.perf_counter() - t0
    q = clustered(n_queries, d, rng, centres, spread)
    res: dict[str, Any] = {"n": n, "dim": d, "spread": spread, "clusters": len(centres), "generate_s": gen_s,
                           "vectors_mb": x.nbytes / 2**20}
    print(f"\n== {n:,} vectors x {d} ({x.nbytes / 2**20:.0f} MB), {len(centres)} clusters, spread {spread}, "
          f"{n_queries} queries")

    # Exact search costs ~N x D per query; at 1M a few dozen queries give its latency, while
    # recall is still measured on every query (one batched exact search gives the truth).
    n_exact = n_queries if n <= 100_000 else min(n_queries, 50)
    naive = latencies(lambda qq: np.argsort(-(x @ qq[0]))[:10], q[: min(n_exact, 20)])
    res["numpy_sort"] = summary(naive)
    ex_lat = latencies(lambda qq: exact_search(x, qq, 10), q[:n_exact])
    res["exact"] = summary(ex_lat)
    res["exact"]["speedup_vs_numpy_sort_p50"] = res["numpy_sort"]["p50_ms"] / res["exact"]["p50_ms"]
    _, truth = exact_search(x, q, 10)
    print(f"  numpy sort p50 {res['numpy_sort']['p50_ms']:.2f} ms | exact p50 {res['exact']['p50_ms']:.2f} ms "
          f"p99 {res['exact']['p99_ms']:.2f} ms")

    try:
        import faiss

        faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ImportError:
        res["faiss"] = "not installed"
        return res

    params = ApproxParams(kind="ivf", nlist=nlist)
    t0 = time.perf_counter()
    ivf = build_approx(x, params, seed=seed)
    res["ivf"] = {"build_s": time.perf_counter() - t0, "nlist": int(ivf.nlist), "settings": []}
    print(f"  ivf build {res['ivf']['build_s']:.1f} s (nlist {ivf.nlist})")
    for nprobe in sorted({min(p, ivf.nlist) for p in nprobes}):
        ivf.nprobe = nprobe
        lat = latencies(lambda qq: approx_search(ivf, qq, 10), q)
        _, found = approx_search(ivf, q, 10)
        entry = {"nprobe": int(ivf.nprobe), **summary(lat), "recall_at_10": recall_at_10(found, truth)}
        entry["speedup_vs_exact_p50"] = res["exact"]["p50_ms"] / entry["p50_ms"]
        res["ivf"]["settings"].append(entry)
        print(f"  ivf nprobe {ivf.nprobe:>3}: p50 {entry['p50_ms']:.3f} ms p99 {entry['p99_ms']:.3f} ms "
              f"recall@10 {entry['recall_at_10']:.3f}")
    ivf = None  # free the copy of the vectors before the next index

    if n <= hnsw_max:
        t0 = time.perf_counter()
        hnsw = build_approx(x, ApproxParams(kind="hnsw"))
        res["hnsw"] = {"build_s": time.perf_counter() - t0, "M": 32, "settings": []}
        print(f"  hnsw build {res['hnsw']['build_s']:.1f} s")
        for ef in (32, 64, 128):
            hnsw.hnsw.efSearch = ef
            lat = latencies(lambda qq: approx_search(hnsw, qq, 10), q)
            _, found = approx_search(hnsw, q, 10)
            entry = {"ef_search": ef, **summary(lat), "recall_at_10": recall_at_10(found, truth)}
            res["hnsw"]["settings"].append(entry)
            print(f"  hnsw ef {ef:>3}: p50 {entry['p50_ms']:.3f} ms p99 {entry['p99_ms']:.3f} ms "
                  f"recall@10 {entry['recall_at_10']:.3f}")
        hnsw = None
    else:
        res["hnsw"] = f"skipped above {hnsw_max:,} vectors (build too long for a shared 2-core machine)"
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def bench_case_index(n: int, d: int, n_queries: int, seed: int) -> dict[str, Any]:
    """The on-disk CaseIndex: add_embeddings (vectors + SQLite + FAISS) and search_vector latency."""
    from medvl.index.build import add_embeddings
    from medvl.index.case_index import CaseIndex

    rng = np.random.default_rng(seed + 1)
    centres = normalize_rows(rng.standard_normal((max(100, n // POINTS_PER_CLUSTER), d), dtype=np.float32))
    x = clustered(n, d, rng, centres)
    q = clustered(n_queries, d, rng, centres)
    cases = [{"study_id": f"S{i:07d}", "image": f"/corpus/img/S{i:07d}.dcm",
              "report": "FINDINGS: Small left pleural effusion. IMPRESSION: Effusion.", "labels": {"pleural_effusion": 1}}
             for i in range(n)]
    root = Path(tempfile.mkdtemp(prefix="medvl-bench-index-"))
    out: dict[str, Any] = {"n": n}
    try:
        for mode in ("never", "always"):
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            add_embeddings(root, x, x, cases, model_info={"fingerprint": "bench"},
                           config={"approximate": mode, "progress": False})
            build_s = time.perf_counter() - t0
            index = CaseIndex.open(root)
            lat = latencies(lambda qq, index=index: index.search_vector(qq[0], k=10), q)
            key = "exact" if mode == "never" else "ivf"
            out[key] = {"build_s": build_s, **summary(lat)}
            print(f"  CaseIndex {key}: build {build_s:.1f} s, search_vector p50 {out[key]['p50_ms']:.2f} ms "
                  f"p99 {out[key]['p99_ms']:.2f} ms (with SQLite fetch of 10 hits)")
            index.close()
        # Incremental add of 1% more cases: only the new rows are embedded; files are rewritten.
        extra = clustered(n // 100, d, rng, centres)
        t0 = time.perf_counter()
        add_embeddings(root, extra, extra, [{**cases[0], "study_id": f"T{i:07d}"} for i in range(len(extra))],
                       model_info={"fingerprint": "bench"}, config={"approximate": "always", "progress": False})
        out["add_1pct_s"] = time.perf_counter() - t0
        print(f"  CaseIndex add {len(extra):,} cases to {n:,}: {out['add_1pct_s']:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "numpy": np.__version__,
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# medvl case-index benchmark", "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, OMP_NUM_THREADS={m['omp_num_threads']}, "
        f"numpy {m['numpy']}, faiss {m['faiss']}. Run {results['started']}; 1-minute load average "
        f"{m['load_average_1min']} (shared machine: absolute times are noisy; compare within a run).", "",
        f"Data: unit-norm float32 vectors of dimension {results['dim']} around N/{POINTS_PER_CLUSTER} (at least 100) random centres, "
        f"Gaussian noise of norm `spread` times the centre's (1.0: neighbours come from the query's cluster; "
        f"{STRESS_SPREAD}: overlapping clusters, neighbours scattered, the stress case); "
        f"queries are fresh draws, one at a time; top-10.", "",
        "| N | spread | method | build s | queries | p50 ms | p99 ms | recall@10 vs exact | speed-up vs exact (p50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"] + results.get("stress", []):
        n = f"{r['n']:,} | {r['spread']}"
        lines.append(f"| {n} | numpy argsort (baseline) | - | {r['numpy_sort']['queries']} | "
                     f"{r['numpy_sort']['p50_ms']:.2f} | {r['numpy_sort']['p99_ms']:.2f} | 1 | - |")
        lines.append(f"| {n} | exact (medvl) | - | {r['exact']['queries']} | {r['exact']['p50_ms']:.2f} | "
                     f"{r['exact']['p99_ms']:.2f} | 1 | 1 |")
        if isinstance(r.get("ivf"), dict):
            for s in r["ivf"]["settings"]:
                lines.append(f"| {n} | IVF nlist {r['ivf']['nlist']} nprobe {s['nprobe']} | {r['ivf']['build_s']:.1f} | "
                             f"{s['queries']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['recall_at_10']:.3f} | "
                             f"{s['speedup_vs_exact_p50']:.0f}x |")
        if isinstance(r.get("hnsw"), dict):
            for s in r["hnsw"]["settings"]:
                lines.append(f"| {n} | HNSW M 32 ef {s['ef_search']} | {r['hnsw']['build_s']:.1f} | {s['queries']} | "
                             f"{s['p50_ms']:.3f} | "
                             f"{s['p99_ms']:.3f} | {s['recall_at_10']:.3f} | "
                             f"{r['exact']['p50_ms'] / s['p50_ms']:.0f}x |")
        elif r.get("hnsw") and r["spread"] == SPREAD:
            lines.append(f"| {n} | HNSW | {r['hnsw']} | | | | | |")
    ci = results.get("case_index")
    if ci:
        lines += ["", f"Full on-disk CaseIndex at {ci['n']:,} cases (vectors for images and reports, SQLite, "
                  "FAISS): `add_embeddings` build time and `search_vector` latency including the SQLite fetch of 10 hits.", "",
                  "| search | build s | p50 ms | p99 ms |", "|---|---|---|---|"]
        for key in ("exact", "ivf"):
            lines.append(f"| {key} | {ci[key]['build_s']:.1f} | {ci[key]['p50_ms']:.2f} | {ci[key]['p99_ms']:.2f} |")
        lines.append(f"\nAdding 1% more cases (incremental, new version, IVF extended): {ci['add_1pct_s']:.1f} s.")
    lines += ["", f"Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index/bench_index.py {results['args']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated vector counts")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells (0: medvl's default for N)")
    ap.add_argument("--stress-sizes", default="", help="sizes also run with the overlapping-cluster stress data")
    ap.add_argument("--stress-nprobe", default="32,64,128,256")
    ap.add_argument("--hnsw-max", type=int, default=100_000)
    ap.add_argument("--end-to-end", type=int, default=100_000, help="CaseIndex size (0 to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": " ".join(sys.argv[1:]),
        "machine": machine(), "dim": args.dim, "spread": SPREAD, "stress_spread": STRESS_SPREAD, "sizes": [],
    }
    for n in (int(s) for s in args.sizes.split(",")):
        results["sizes"].append(bench_size(n, args.dim, args.queries, [int(p) for p in args.nprobe.split(",")],
                                           args.hnsw_max, args.seed, nlist=args.nlist))
    results["stress"] = []
    for n in (int(s) for s in args.stress_sizes.split(",") if s):
        results["stress"].append(bench_size(n, args.dim, min(args.queries, 100),
                                            [int(p) for p in args.stress_nprobe.split(",")], 0, args.seed,
                                            spread=STRESS_SPREAD, nlist=args.nlist))
    if args.end_to_end:
        print(f"\n== CaseIndex end to end at {args.end_to_end:,}")
        results["case_index"] = bench_case_index(args.end_to_end, args.dim, min(args.queries, 100), args.seed)
    results["peak_rss_mb"] = peak_rss_mb()
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()

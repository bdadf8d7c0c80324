"""Evaluation metric speed: vectorised bootstrap AUROC and retrieval ranks vs naive loops.

In one process, on the same random data:

* bootstrap AUROC CIs, medvl's vectorised form (one sort per class serves every resample)
  against a loop calling scikit-learn's ``roc_auc_score`` per resample (the usual code);
  both give the same intervals (``tests/eval`` checks it), so only time differs;
* retrieval ranks and R@K for an N x N similarity matrix, medvl's ``ranks_from_scores``
  against a per-query ``argsort``;
* the effect of hubness reduction on synthetic embeddings with hubs (a few gallery items
  close to every query): R@1, R@10 and k-occurrence skewness, plain vs inverted softmax
  vs QB-Norm, with a separate query bank.

Prints the figures and writes ``results.json`` and ``results.md`` next to this file. Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval/bench_metrics.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medvl.eval.metrics import bootstrap_auroc, bootstrap_indices, ranks_from_scores, recall_at_k
from medvl.eval.retrieval import inverted_softmax, k_occurrence_skewness, querybank_normalize

HERE = Path(__file__).resolve().parent


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def naive_bootstrap(labels: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int) -> list[tuple[float, float]]:
    from sklearn.metrics import roc_auc_score

    idx = bootstrap_indices(len(labels), n_resamples, seed)
    out = []
    for j in range(labels.shape[1]):
        vals = []
        for b in range(n_resamples):
            lab, sc = labels[idx[b], j], scores[idx[b], j]
            keep = ~np.isnan(lab)
            if len(np.unique(lab[keep])) == 2:
                vals.append(roc_auc_score(lab[keep], sc[keep]))
        out.append((float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))))
    return out


def naive_ranks(scores: np.ndarray) -> np.ndarray:
    out = np.empty(scores.shape[0], dtype=np.int64)
    for i, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        out[i] = int(np.flatnonzero(order == i)[0]) + 1
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def hubness_effect(n: int, d: int = 64, hubs: int = 5, seed: int = 0) -> dict[str, Any]:
    """Queries match gallery item i, but a shared direction pulls every query towards a few hubs."""
    rng = np.random.default_rng(seed)
    gallery = _unit(rng.normal(size=(n, d)))
    hub_dir = _unit(rng.normal(size=d))
    gallery[:hubs] = _unit(hub_dir + 0.3 * rng.normal(size=(hubs, d)) / np.sqrt(d))

    def queries(idx: np.ndarray) -> np.ndarray:
        return _unit(gallery[idx] + 1.2 * rng.normal(size=(len(idx), d)) / np.sqrt(d) + 0.8 * hub_dir)

    q = queries(np.arange(n))
    bank = queries(rng.integers(0, n, size=n))  # another set of queries, as a train split would give
    scores, bank_scores = q @ gallery.T, bank @ gallery.T
    gt = np.arange(n)
    out = {}
    for name, s in (("plain", scores), ("inverted_softmax", inverted_softmax(scores, bank_scores, 20.0)),
                    ("qb_norm", querybank_normalize(scores, bank_scores, 20.0))):
        r = ranks_from_scores(s, gt)
        out[name] = {"R@1": recall_at_k(r, 1), "R@10": recall_at_k(r, 10),
                     "k_occurrence_skewness": k_occurrence_skewness(s, 10),
                     "top1_is_hub": float(np.mean(np.argmax(s, axis=1) < hubs))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="studies (bootstrap) and queries (retrieval)")
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.choice([1.0, 0.0, np.nan], size=(args.n, args.classes), p=[0.3, 0.6, 0.1])
    scores = rng.normal(size=labels.shape) + np.nan_to_num(labels)

    t_vec, vec = _timed(lambda: bootstrap_auroc(labels, scores, n_resamples=args.resamples, seed=1))
    t_naive, naive = _timed(lambda: naive_bootstrap(labels, scores, args.resamples, 1))
    agree = all(abs(vec[str(j)]["ci_low"] - lo) < 1e-9 and abs(vec[str(j)]["ci_high"] - hi) < 1e-9
                for j, (lo, hi) in enumerate(naive))
    print(f"bootstrap AUROC, {args.n} studies x {args.classes} classes x {args.resamples} resamples: "
          f"vectorised {t_vec:.2f} s, sklearn loop {t_naive:.2f} s ({t_naive / t_vec:.1f}x), same CIs: {agree}")

    emb = rng.normal(size=(args.n, 64)).astype(np.float32)
    sim = emb @ (emb + 3.0 * rng.normal(size=emb.shape).astype(np.float32)).T
    t_rank, ranks = _timed(lambda: ranks_from_scores(sim, np.arange(args.n)))
    t_loop, ref = _timed(lambda: naive_ranks(sim))
    print(f"ranks of {args.n} queries x {args.n} gallery: vectorised {t_rank * 1e3:.1f} ms, argsort loop "
          f"{t_loop * 1e3:.1f} ms ({t_loop / t_rank:.1f}x), same ranks: {bool(np.array_equal(ranks, ref))}, "
          f"R@10 {recall_at_k(ranks, 10):.3f}")

    hub = hubness_effect(args.n)
    for name, r in hub.items():
        print(f"hubness {name:>16}: R@1 {r['R@1']:.3f} R@10 {r['R@10']:.3f} skewness {r['k_occurrence_skewness']:.2f} "
              f"top-1 is a hub {r['top1_is_hub']:.3f}")

    results = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "load_average_1min": round(os.getloadavg()[0], 2), "numpy": np.__version__},
        "bootstrap": {"n": args.n, "classes": args.classes, "resamples": args.resamples,
                      "vectorised_s": t_vec, "sklearn_loop_s": t_naive, "speedup": t_naive / t_vec,
                      "same_intervals": agree},
        "ranks": {"n": args.n, "vectorised_ms": t_rank * 1e3, "argsort_loop_ms": t_loop * 1e3,
                  "speedup": t_loop / t_rank, "same_ranks": bool(np.array_equal(ranks, ref))},
        "hubness": hub,
    }
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    b, r = results["bootstrap"], results["ranks"]
    (out / "results.md").write_text(
        "# medvl evaluation metric benchmark\n\n"
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, OMP_NUM_THREADS={m['omp_num_threads']}, "
        f"numpy {m['numpy']}. Run {results['started']}; 1-minute load average {m['load_average_1min']} "
        "(shared machine; read the ratios).\n\n"
        "| what | medvl | naive loop | speed-up | same result |\n|---|---|---|---|---|\n"
        f"| bootstrap AUROC CIs ({b['n']} studies x {b['classes']} classes x {b['resamples']} resamples) | "
        f"{b['vectorised_s']:.2f} s | {b['sklearn_loop_s']:.2f} s (sklearn per resample) | {b['speedup']:.1f}x | "
        f"{b['same_intervals']} |\n"
        f"| retrieval ranks ({r['n']} x {r['n']}) | {r['vectorised_ms']:.1f} ms | {r['argsort_loop_ms']:.1f} ms "
        f"(argsort per query) | {r['speedup']:.1f}x | {r['same_ranks']} |\n\n"
        f"Hubness reduction on synthetic embeddings with 5 hubs ({args.n} queries and gallery items, a separate "
        "bank of as many queries, beta 20):\n\n| ranking | R@1 | R@10 | k-occurrence skewness | top-1 is a hub |\n"
        "|---|---|---|---|---|\n"
        + "".join(f"| {k} | {v['R@1']:.3f} | {v['R@10']:.3f} | {v['k_occurrence_skewness']:.2f} | "
                  f"{v['top1_is_hub']:.3f} |\n" for k, v in results["hubness"].items()) + "\n"
        f"Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval/bench_metrics.py {results['args']}`.\n"
    )
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()

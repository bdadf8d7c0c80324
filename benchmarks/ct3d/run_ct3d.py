"""Does the 3D path learn from CT, and how do the ways of pooling compare? (issue 15, point 5)

Four arms (``benchmarks.ct3d.common.ARMS``: a 2D ResNet-10 per slice pooled by mean,
max or attention, and a native 3D ResNet-10 of the same width) are trained on the
same synthetic CT corpus (patient-level splits) with the same text tower, instance
(InfoNCE) loss, optimizer, batch and number of optimizer steps, for each training
seed. Each trained model is evaluated on the held-out test patients:

* zero-shot AUROC over the CT findings with the ``ct`` prompt set
  (``medvl.eval.evaluate``, CheXzero softmax scoring, 95% bootstrap CI over studies);
* image->report and report->image retrieval R@K (``medvl.eval.evaluate``), with 95%
  bootstrap CIs over *patients* computed here from the same ranks (a patient's
  studies resampled together, since they share anatomy and often findings); chance
  is K / gallery size.

Training cost is recorded per run (wall and CPU seconds, median s/step); the clean
per-step time and memory comparison is ``step_cost.py`` (arms alternating in one
process). Arm order rotates with the seed. Each run writes ``record.json`` in its own
folder and is skipped when that exists, so the benchmark resumes after an
interruption and seeds can run in parallel processes (``--seeds 0`` and ``--seeds 1``);
``results.json``/``results.md`` are rewritten from all records after every run
(``--report-only`` just rewrites them)::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -m benchmarks.ct3d.run_ct3d --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ct3d.run_ct3d --smoke     # wiring, ~2 min
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ct3d.common import (
    ARMS,
    CT_SIZE,
    HERE,
    IMAGE_SIZE,
    REPO,
    TEXT,
    experiment,
    load_avg,
    machine,
    make_corpus,
)

EVAL: dict[str, Any] = {"n_bootstrap": 1000, "plots": False, "progress": False, "hubness": "none", "seed": 0,
                        "prompts": "ct"}
METRICS = ("zeroshot_mean_auroc", "zeroshot_positive_auroc", "multiclass_accuracy", "i2t_R@1", "i2t_R@5", "i2t_R@10",
           "t2i_R@5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ct3d_bench"), help="corpus, cache and runs")
    p.add_argument("--results-dir", default=str(HERE))
    p.add_argument("--n-ct", type=int, default=600, help="CT studies in the corpus")
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=240, help="optimizer steps per arm (equal compute in steps)")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--runs", nargs="+", default=None, metavar="SEED:ARM",
                   help="run exactly these, in this order (e.g. 0:native-3d 1:slices-mean); several processes "
                        "given the same list share it out (each run is claimed by one)")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--smoke", action="store_true", help="60 studies, 4 steps, 1 seed: checks the wiring")
    p.add_argument("--report-only", action="store_true", help="train nothing, rewrite results from the records")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_ct, args.seeds, args.steps, args.batch_size, args.n_bootstrap = 60, [0], 4, 8, 50
        args.work = str(Path(args.work).with_name(Path(args.work).name + "_smoke"))
        args.results_dir = str(Path(args.work) / "results")
    return args


def patient_bootstrap_recall(ranks: np.ndarray, patients: list[str], ks: tuple[int, ...], *,
                             n_resamples: int, seed: int = 0, confidence: float = 0.95) -> dict[str, list[float]]:
    """Percentile CIs of R@K with whole patients resampled (their queries kept together)."""
    ids = sorted(set(patients))
    groups = [np.flatnonzero(np.array([p == pid for p in patients])) for pid in ids]
    rng = np.random.default_rng(seed)
    samples = np.empty((n_resamples, len(ks)))
    for b in range(n_resamples):
        pick = rng.integers(0, len(groups), size=len(groups))
        r = np.concatenate([ranks[groups[i]] for i in pick])
        samples[b] = [(r[r > 0] <= k).mean() for k in ks]
    lo, hi = np.percentile(samples, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2], axis=0)
    return {f"R@{k}": [float(lo[j]), float(hi[j])] for j, k in enumerate(ks)}


def retrieval_cis(model: Any, manifest: Path, data_cfg: dict[str, Any], n_resamples: int) -> dict[str, Any]:
    """Per-query ranks of both directions on the test split, and patient-bootstrap CIs of R@K."""
    from medvl.data.manifest import read_manifest
    from medvl.eval.embed import embed_split
    from medvl.eval.metrics import ranks_from_scores
    from medvl.eval.retrieval import collapse_texts

    emb = embed_split(model, manifest, "test", data_cfg)
    patient = {r.study_id: r.patient_id for r in read_manifest(manifest)}
    unique, inverse = collapse_texts(emb.texts)
    first = np.unique(inverse, return_index=True)[1]
    text_u = emb.text[first]
    i2t_ranks = ranks_from_scores(emb.image @ text_u.T, inverse)
    rel_t2i = inverse[None, :] == np.arange(len(unique))[:, None]
    t2i_ranks = ranks_from_scores(text_u @ emb.image.T, rel_t2i)
    q_patients = [patient[s] for s in emb.study_ids]
    t_patients = [q_patients[i] for i in first]  # a unique text belongs to the patient of its first study
    ks = (1, 5, 10)
    return {
        "i2t_ranks_R@5": float((i2t_ranks <= 5).mean()),
        "i2t_ci": patient_bootstrap_recall(i2t_ranks, q_patients, ks, n_resamples=n_resamples),
        "t2i_ci": patient_bootstrap_recall(t2i_ranks, t_patients, ks, n_resamples=n_resamples),
        "n_test_patients": len(set(q_patients)),
    }


def score(model: Any, manifest: Path, cfg: dict[str, Any], out_dir: Path, n_bootstrap: int) -> dict[str, Any]:
    """Zero-shot and retrieval on the test split, with CIs."""
    import torch

    from medvl.eval import evaluate

    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        res = evaluate(model, manifest, tasks=["zeroshot", "retrieval"], out_dir=out_dir, data_cfg=cfg["data"],
                       split="test", config=EVAL | {"n_bootstrap": n_bootstrap})
        extra = retrieval_cis(model, manifest, cfg["data"], n_bootstrap)
    zs, rt = res["zeroshot"], res["retrieval"]
    i2t, t2i = rt["image_to_report"], rt["report_to_image"]
    # the ranks recomputed here must be the evaluator's (same embeddings, same ties rule)
    if abs(extra["i2t_ranks_R@5"] - i2t["R@5"]) > 1e-9:
        raise RuntimeError(f"retrieval ranks disagree: {extra['i2t_ranks_R@5']} vs {i2t['R@5']}")
    return {
        "zeroshot_mean_auroc": zs["mean_auroc"], "zeroshot_mean_auroc_ci": zs.get("mean_auroc_ci"),
        "zeroshot_per_class": {f: {"auroc": v["auroc"], "ci": [v.get("ci_low"), v.get("ci_high")],
                                   "n_pos": v.get("n_pos"), "n_neg": v.get("n_neg")}
                               for f, v in zs["per_class"].items()},
        "i2t_R@1": i2t["R@1"], "i2t_R@5": i2t["R@5"], "i2t_R@10": i2t["R@10"], "t2i_R@5": t2i["R@5"],
        "i2t_ci": extra["i2t_ci"], "t2i_ci": extra["t2i_ci"],
        "i2t_gallery_size": i2t["gallery_size"], "t2i_gallery_size": t2i["gallery_size"],
        "i2t_chance_R@5": min(1.0, 5 / i2t["gallery_size"]), "t2i_chance_R@5": min(1.0, 5 / t2i["gallery_size"]),
        "n_test_studies": rt["n_images"], "n_test_patients": extra["n_test_patients"],
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def step_seconds(run_dir: Path, batch_size: int, skip: int = 2) -> float | None:
    """Median seconds per optimizer step from the engine's per-step ``samples_per_s``."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    vals = sorted(batch_size / float(r["samples_per_s"]) for r in csv.DictReader(path.open())
                  if r.get("split") == "train" and r.get("samples_per_s") and int(r["step"]) > skip
                  and float(r["samples_per_s"]) > 0)
    return round(vals[len(vals) // 2], 3) if vals else None


def final_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("split") == "train" and r.get("loss")]
    return float(rows[-1]["loss"]) if rows else None


def _mean_sd(values: list[float]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def aggregate(records: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        s = {m: _mean_sd([r[m] for r in rs]) for m in METRICS}
        s["per_class_auroc"] = {f: _mean_sd([r["zeroshot_per_class"][f]["auroc"] for r in rs])
                                for f in rs[0]["zeroshot_per_class"]}
        s["train_cpu_seconds"] = _mean_sd([r["train_cpu_seconds"] for r in rs])
        s["train_seconds"] = _mean_sd([r["train_seconds"] for r in rs])
        s["seeds"] = [r["seed"] for r in rs]
        out[arm] = s
    return out


def _f(v: Any, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _ms(d: dict[str, Any], nd: int = 3) -> str:
    if d["mean"] is None:
        return "n/a"
    return f"{d['mean']:.{nd}f}" + ("" if d["sd"] is None else f" ± {d['sd']:.{nd}f}")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, st = report["machine"], report["settings"]
    runs, summary = report["runs"], report["summary"]
    lines = [
        "# 3D learning on synthetic CT: slice pooling (mean / max / attention) vs native 3D",
        "",
        f"Started {report['date_utc']} UTC on {m['platform']}, {m['cpu_count']} CPUs (shared with other jobs), "
        f"torch {m['torch']}, {m['torch_threads']} thread(s) per process. Command: `{report['command']}`.",
        "",
        f"Corpus: {st['n_ct']} synthetic chest CTs (`medvl synth`, seed {st['corpus_seed']}, rendered at "
        f"{CT_SIZE[0]}x{CT_SIZE[1]}x{CT_SIZE[2]} voxels, ~30% DICOM series, the rest NIfTI), patient-level "
        f"splits {report.get('split_sizes')}; model grid D x H x W {IMAGE_SIZE}, lung window. Each arm: "
        f"{st['steps']} AdamW steps of batch {st['batch_size']} (lr {st['lr']}, 5% warm-up, cosine), instance "
        f"loss, text tower {TEXT['name']} {TEXT['num_layers']}x{TEXT['hidden_size']} from scratch, embed 64, "
        "last model evaluated on the test patients. Chance: AUROC 0.5, R@K = K / gallery.",
        "",
        "## Mean ± sd over seeds",
        "",
        "Zero-shot: mean AUROC over the CT findings with the evaluator's headline scoring (softmax of "
        "positive vs negative prompts, CheXzero) and with positive prompts only; multi-class: accuracy of the "
        "argmax over findings on test studies with exactly one.",
        "",
        "| arm | seeds | zero-shot AUROC (softmax) | zero-shot AUROC (positive) | multi-class acc. | i2t R@1 | "
        "i2t R@5 | i2t R@10 | t2i R@5 | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(f"| {arm} | {len(s['seeds'])} | {_ms(s['zeroshot_mean_auroc'])} | "
                     f"{_ms(s['zeroshot_positive_auroc'])} | {_ms(s['multiclass_accuracy'])} | {_ms(s['i2t_R@1'])} | "
                     f"{_ms(s['i2t_R@5'])} | {_ms(s['i2t_R@10'])} | {_ms(s['t2i_R@5'])} | "
                     f"{_ms(s['train_cpu_seconds'], 0)} |")
    if runs:
        r0 = runs[0]
        lines += ["", f"Chance: zero-shot 0.500; multi-class {_f(r0.get('multiclass_chance'))} "
                  f"({r0.get('multiclass_n')} studies); i2t R@1 {1 / r0['i2t_gallery_size']:.3f}, R@5 "
                  f"{r0['i2t_chance_R@5']:.3f}, R@10 {min(1.0, 10 / r0['i2t_gallery_size']):.3f} (gallery "
                  f"{r0['i2t_gallery_size']} unique reports of {r0['n_test_studies']} test studies, "
                  f"{r0['n_test_patients']} patients); t2i R@5 {r0['t2i_chance_R@5']:.3f}."]
    lines += ["", "## Per-class zero-shot AUROC (mean ± sd over seeds)", ""]
    if summary:
        classes = list(next(iter(summary.values()))["per_class_auroc"])
        lines += ["| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for arm, s in summary.items():
            lines.append(f"| {arm} | " + " | ".join(_ms(s["per_class_auroc"][c], 2) for c in classes) + " |")
    lines += ["", "## Every run, with 95% bootstrap CIs", "",
              "AUROC CI: studies resampled (the evaluator's). R@K CI: test patients resampled.", "",
              "| arm | seed | AUROC [CI] | i2t R@5 [CI] | i2t R@10 [CI] | t2i R@5 [CI] | final loss | "
              "train s (CPU s) | "
              "s/step | load |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], list(ARMS).index(r["arm"]))):
        ci = r.get("zeroshot_mean_auroc_ci") or [None, None]
        lines.append(
            f"| {r['arm']} | {r['seed']} | {_f(r['zeroshot_mean_auroc'])} [{_f(ci[0])}, {_f(ci[1])}] | "
            f"{_f(r['i2t_R@5'])} [{_f(r['i2t_ci']['R@5'][0])}, {_f(r['i2t_ci']['R@5'][1])}] | "
            f"{_f(r['i2t_R@10'])} [{_f(r['i2t_ci']['R@10'][0])}, {_f(r['i2t_ci']['R@10'][1])}] | "
            f"{_f(r['t2i_R@5'])} [{_f(r['t2i_ci']['R@5'][0])}, {_f(r['t2i_ci']['R@5'][1])}] | "
            f"{_f(r['final_loss'])} | {r['train_seconds']:.0f} ({r['train_cpu_seconds']:.0f}) | "
            f"{_f(r['seconds_per_step'], 2)} | {r['load_1min']} |")
    if report.get("interpretation"):
        lines += ["", "## Interpretation", "", report["interpretation"]]
    lines += ["", "Time and peak memory per step, arms alternating in one process: `step_cost.md`. "
              "Visibility of the findings on this grid: `visibility.md`.", ""]
    path.write_text("\n".join(lines))


def _done(run_dir: Path) -> bool:
    """A finished run: a ``record.json`` that is not a placeholder."""
    path = run_dir / "record.json"
    return path.is_file() and not json.loads(path.read_text()).get("placeholder")


def _claim(run_dir: Path) -> bool:
    """Claim a run for this process (a ``claim`` file created exclusively); False if taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def collect(work: Path, arms: list[str]) -> list[dict[str, Any]]:
    """Every run's record, with the other zero-shot readings taken from its ``eval/results.json``.

    ``zeroshot_positive_auroc``: mean AUROC with positive prompts only (no negation to
    understand); ``multiclass_accuracy``: the argmax over findings on studies with
    exactly one (chance ``multiclass_chance``).
    """
    recs = []
    for p in sorted(work.glob("seed*/*/record.json")):
        r = json.loads(p.read_text())
        if r.get("placeholder") or r["arm"] not in arms:
            continue
        res = p.parent / "eval" / "results.json"
        zs = json.loads(res.read_text())["zeroshot"] if res.is_file() else {}
        r.setdefault("zeroshot_positive_auroc", (zs.get("variants") or {}).get("positive/mean"))
        mc = zs.get("multiclass") or {}
        r.setdefault("multiclass_accuracy", mc.get("accuracy"))
        r.setdefault("multiclass_chance", mc.get("chance"))
        r.setdefault("multiclass_n", mc.get("n"))
        recs.append(r)
    return recs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medvl.atomic import write_text_atomic

    work, results_dir = Path(args.work), Path(args.results_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    report_path = results_dir / "results.json"
    prev = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report: dict[str, Any] = {
        "benchmark": "3D learning and slice pooling on synthetic CT (issue 15 point 5)",
        "date_utc": prev.get("date_utc") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "command": prev.get("command") or " ".join(["OMP_NUM_THREADS=1 nice -n 15 python -m benchmarks.ct3d.run_ct3d",
                                                    *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results_dir", "report_only", "seeds")},
        "ct_size": list(CT_SIZE), "image_size": IMAGE_SIZE, "arms": {a: ARMS[a] for a in args.arms}, "text": TEXT,
        "eval": EVAL | {"n_bootstrap": args.n_bootstrap}, "interpretation": prev.get("interpretation"),
    }

    def save() -> None:
        runs = collect(work, args.arms)
        report["runs"] = runs
        report["seeds_done"] = sorted({r["seed"] for r in runs})
        report["summary"] = aggregate(runs, args.arms)
        write_text_atomic(report_path, json.dumps(report, indent=2, default=float))
        write_markdown(report, results_dir / "results.md")

    t0 = time.perf_counter()
    manifest = make_corpus(work, args.n_ct, args.corpus_seed)
    report["corpus_seconds"] = round(time.perf_counter() - t0, 1)
    from medvl.data.manifest import read_manifest

    rows = read_manifest(manifest)
    report["split_sizes"] = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    if args.report_only:
        save()
        print((results_dir / "results.md").read_text())
        return 0

    from medvl.models import MedVLModel
    from medvl.train import train

    if args.runs:
        order = [(int(r.split(":")[0]), r.split(":")[1]) for r in args.runs]
    else:
        order = [(seed, arm) for seed in args.seeds
                 for arm in args.arms[seed % len(args.arms):] + args.arms[: seed % len(args.arms)]]
    for seed, arm in order:
        run_dir = work / f"seed{seed}" / arm
        if _done(run_dir):
            print(f"[ct3d] seed {seed}, {arm}: done before, skipped", flush=True)
            continue
        if not _claim(run_dir):
            print(f"[ct3d] seed {seed}, {arm}: claimed by another process, skipped", flush=True)
            continue
        cfg = experiment(arm, manifest, work / "cache", seed=seed, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr)
        load0 = load_avg()
        print(f"[ct3d] seed {seed}, {arm}: training {args.steps} steps (load {load0})", flush=True)
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        result = train(cfg, run_dir)
        train_s, train_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        model = MedVLModel.from_pretrained(result.model_dir)
        rec = {"arm": arm, "seed": seed, "load_1min": load0, "steps": result.steps,
               "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1),
               "seconds_per_step": step_seconds(run_dir, args.batch_size), "final_loss": final_loss(run_dir),
               **score(model, manifest, cfg, run_dir / "eval", args.n_bootstrap)}
        write_text_atomic(run_dir / "record.json", json.dumps(rec, indent=2, default=float))
        print(f"[ct3d]   {train_s:.0f} s ({train_cpu:.0f} CPU s); AUROC {rec['zeroshot_mean_auroc']:.3f}, "
              f"i2t R@5 {rec['i2t_R@5']:.3f} (chance {rec['i2t_chance_R@5']:.3f})", flush=True)
        save()
    save()
    print((results_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

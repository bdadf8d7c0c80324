"""The inference unit measured: calibration, the out-of-distribution flag, ``medvl embed``, fit cost.

On a trained run (default ``runs/demo``, written by ``make demo``):

* **calibration**: on the synthetic test split (held out; calibration was fitted on val),
  per finding and averaged, ECE (15 equal-width bins), Brier score and AUROC of the
  zero-shot scores before (the ``softmax`` rule's raw score) and after (the calibrated
  probability ``classify`` returns);
* **OOD flag rates**: ``Pipeline.check_image`` on every test-split study (in
  distribution), on every real DICOM file shipped with pydicom and pydicom-data that
  medvl can read (the chest radiographs ``RG1_*`` apart: non-chest), with the first
  reason per file (and how each check alone does: the header checks, the embedding
  check, the image-feature check); and ``Pipeline.check_text`` (the query prepared as training reports were)
  on the test reports' sentences and on off-domain queries;
* **embed throughput**: ``medvl embed``'s ``embed_items`` on the test split against the
  bare ``Pipeline.embed_images`` loop, in the same process (a ratio: the machine is shared);
* **fit cost**: ``fit_model_dir`` (end-of-training calibration + profile) on a copy of the
  model, against the run's own training time.

Writes ``results.json`` and ``results.md`` next to this file with the machine and load.
Run (after ``make demo``)::

    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference/bench_inference.py --run runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OFF_DOMAIN_QUERIES = [
    "glioblastoma with surrounding vasogenic oedema",
    "torn anterior cruciate ligament",
    "acute appendicitis with periappendiceal fat stranding",
    "hepatic steatosis",
    "fracture of the distal radius",
    "intraventricular haemorrhage",
    "renal calculus in the lower pole",
    "meniscal tear of the medial knee",
]


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1min_start": round(os.getloadavg()[0], 2)}


def real_dicom_files() -> list[Path]:
    """Every file in pydicom's and pydicom-data's test folders (listed, never downloaded)."""
    import pydicom.data
    from pydicom.data import get_testdata_file

    folders = [Path(pydicom.data.__file__).parent / "test_files",
               Path(get_testdata_file("RG1_UNCR.dcm", download=False)).parent]
    out: list[Path] = []
    for folder in folders:
        out += sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(
            (".py", ".pyc", ".txt", ".json", ".md", ".gz", ".bz2", ".xz", ".zip", ".py~")))
    return out


def calibration_part(pipe: Any, manifest: Path) -> tuple[dict[str, Any], Any]:
    from medvl.eval.calibration import calibration_report
    from medvl.inference.embedding import embed_split

    emb = embed_split(pipe.model, manifest, "test", pipe.data_config, with_text=False)
    ps = pipe.prompt_set()  # as classify and the end-of-training fit choose it
    report = calibration_report(pipe, emb, ps, pipe.rule.scoring, pipe.rule.ensemble)
    report["prompt_set"] = ps.name
    report["n_test_studies"] = len(emb)
    report["uncalibrated"] = dict(pipe.calibration.uncalibrated) if pipe.calibration else {}
    return report, emb


def ood_part(pipe: Any, manifest: Path, emb: Any) -> dict[str, Any]:
    from medvl.data.manifest import read_manifest, resolve_path
    from medvl.errors import MedvlError

    rows = {r.study_id: r for r in read_manifest(manifest, split="test") if r.dims == pipe.dims}
    t0 = time.perf_counter()
    test_flags = [pipe.check_image(resolve_path(manifest, rows[s].image)) for s in emb.study_ids]
    test_seconds = time.perf_counter() - t0
    reasons = Counter(r.reason.split(" (")[0] for r in test_flags if r.ood)

    files = real_dicom_files()
    per_file: list[dict[str, Any]] = []
    for path in files:
        rec: dict[str, Any] = {"file": path.name}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = pipe.read(path)
                check = pipe.check_image(img)
        except (MedvlError, OSError, ValueError) as exc:
            rec.update(readable=False, error=type(exc).__name__)
            per_file.append(rec)
            continue
        tags = img.tags or {}
        chest = str(tags.get("BodyPartExamined", "")).upper() == "CHEST" and img.modality in ("CR", "DX")
        first = next((k for k, v in check.details.items() if not v.get("ok", True)), None)
        rec.update(readable=True, chest=chest, modality=img.modality, body_part=tags.get("BodyPartExamined"),
                   ood=check.ood, first_check=first, reason=check.reason,
                   failing=[k for k, v in check.details.items() if not v.get("ok", True)],
                   judged=sorted(check.details),
                   header_flag=any(not v.get("ok", True) for k, v in check.details.items()
                                   if k not in ("embedding", "features")),
                   embedding_flag=not check.details.get("embedding", {}).get("ok", True)
                   if "embedding" in check.details else None,
                   features_flag=not check.details.get("features", {}).get("ok", True)
                   if "features" in check.details else None)
        per_file.append(rec)
    readable = [r for r in per_file if r["readable"]]
    non_chest = [r for r in readable if not r["chest"]]
    chest = [r for r in readable if r["chest"]]
    emb_judged = [r for r in non_chest if r["embedding_flag"] is not None]
    feat_judged = [r for r in non_chest if r["features_flag"] is not None]

    # report sentences as queries: those of the sections the model was trained on (in
    # distribution), and, apart, those of the other sections (indication, comparison...)
    from medvl.data.reports import split_sentences

    trained_sections = set(pipe.data_config.sections)
    sentences: dict[bool, list[str]] = {True: [], False: []}
    for s in emb.study_ids:
        for section, text in rows[s].report.items():
            sentences[section in trained_sections] += split_sentences(str(text))
    sentences = {k: list(dict.fromkeys(v)) for k, v in sentences.items()}

    def text_rate(texts: list[str]) -> dict[str, Any]:
        flagged = [t for t in texts if pipe.check_text(t).ood]
        return {"n": len(texts), "flag_rate": len(flagged) / max(1, len(texts)), "flagged": flagged[:20]}
    return {
        "in_distribution_test_split": {
            "n": len(test_flags), "flagged": sum(r.ood for r in test_flags),
            "flag_rate": sum(r.ood for r in test_flags) / max(1, len(test_flags)),
            "reasons": dict(reasons), "seconds_per_image": test_seconds / max(1, len(test_flags)),
        },
        "real_dicoms": {
            "n_files": len(per_file), "n_readable": len(readable),
            "unreadable": dict(Counter(r["error"] for r in per_file if not r["readable"])),
            "non_chest": {
                "n": len(non_chest), "flagged": sum(r["ood"] for r in non_chest),
                "flag_rate": sum(r["ood"] for r in non_chest) / max(1, len(non_chest)),
                "header_checks_flag_rate": sum(r["header_flag"] for r in non_chest) / max(1, len(non_chest)),
                "embedding_check_flag_rate": (sum(bool(r["embedding_flag"]) for r in emb_judged)
                                              / max(1, len(emb_judged))),
                "n_embedding_judged": len(emb_judged),
                "features_check_flag_rate": (sum(bool(r["features_flag"]) for r in feat_judged)
                                             / max(1, len(feat_judged))),
                "n_features_judged": len(feat_judged),
                "first_check": dict(Counter(r["first_check"] for r in non_chest if r["ood"])),
                "failing_checks": dict(Counter(k for r in non_chest for k in r["failing"])),
                "judged_by": dict(Counter(k for r in non_chest for k in r["judged"])),
                "not_flagged": [r["file"] for r in non_chest if not r["ood"]],
            },
            "chest": [{k: r[k] for k in ("file", "ood", "reason", "header_flag", "embedding_flag", "features_flag")}
                      for r in chest],
        },
        "text": {
            "sections_trained_on": sorted(trained_sections),
            "test_report_sentences": text_rate(sentences[True]),
            "other_section_sentences": text_rate(sentences[False]),
            "off_domain_queries": {"n": len(OFF_DOMAIN_QUERIES),
                                   "flag_rate": sum(pipe.check_text(t).ood for t in OFF_DOMAIN_QUERIES)
                                   / len(OFF_DOMAIN_QUERIES),
                                   "not_flagged": [t for t in OFF_DOMAIN_QUERIES if not pipe.check_text(t).ood]},
        },
        "per_file": per_file,
    }


def embed_part(pipe: Any, manifest: Path, n: int) -> dict[str, Any]:
    import numpy as np

    from medvl.data.manifest import resolve_path
    from medvl.inference.export import embed_items, manifest_items

    items = [i for i in manifest_items(manifest, "test", pipe.dims) if not i.skip_reason][:n]
    paths = [resolve_path(manifest, i.path) for i in items]
    pipe.embed_images(paths[:4])  # warm-up
    out: dict[str, Any] = {"n_items": len(items), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):  # interleaved, so both see the same machine load
            t0 = time.perf_counter()
            base = pipe.embed_images(paths)
            t_base = time.perf_counter() - t0
            t0 = time.perf_counter()
            embed_items(pipe, items, Path(tmp) / f"img{k}", what=["image"], progress=False)
            t_img = time.perf_counter() - t0
            t0 = time.perf_counter()
            embed_items(pipe, items, Path(tmp) / f"both{k}", what=["image", "report"], progress=False)
            t_both = time.perf_counter() - t0
            out["rounds"].append({"baseline_items_per_s": len(items) / t_base, "image_items_per_s": len(items) / t_img,
                                  "image_report_items_per_s": len(items) / t_both})
        import pyarrow.parquet as pq

        written = np.stack(pq.read_table(Path(tmp) / "img1").column("image_embedding").to_pylist())
        out["max_abs_diff_vs_baseline"] = float(np.abs(written - base).max())
    r = out["rounds"]
    out["image_vs_baseline_ratio"] = float(np.median([x["image_items_per_s"] / x["baseline_items_per_s"] for x in r]))
    out["image_items_per_s"] = float(np.median([x["image_items_per_s"] for x in r]))
    out["image_report_items_per_s"] = float(np.median([x["image_report_items_per_s"] for x in r]))
    return out


def fit_part(run: Path) -> dict[str, Any]:
    from medvl.config import from_dict, load_config
    from medvl.data.config import DataConfig
    from medvl.inference.fit import fit_model_dir

    cfg = load_config(run / "config.yaml")
    data = from_dict(DataConfig, cfg["data"], where="data")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(run / "model", model)
        t0 = time.perf_counter()
        res = fit_model_dir(model, data, data.manifest)
        seconds = time.perf_counter() - t0
    train_s = (summary.get("timings_s") or {}).get("train_s")
    return {"fit_seconds": seconds, "train_seconds_of_run": train_s,
            "fit_over_train": seconds / train_s if train_s else None,
            "n_validation": res["n_validation"], "n_reference": res["n_reference"]}


def _fmt(v: Any, nd: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render_md(res: dict[str, Any]) -> str:
    """The results as Markdown; a partial run renders the parts it has."""
    head = ["# Inference benchmark", "", f"Run: `{res['run']}`; machine: {res['machine']['processor']}, "
            f"{res['machine']['cpu_count']} CPUs, load {res['machine']['load_average_1min_start']} at start, "
            f"{res['machine']['load_average_1min_end']} at end; torch {res['machine']['torch']}, "
            f"OMP_NUM_THREADS={res['machine']['omp_num_threads']}. Command: `{res.get('command', '')}`.", ""]
    demo = res.get("demo") or {}
    if demo.get("make_demo_wall") or demo.get("timings_s"):
        t = demo.get("timings_s") or {}
        head += [f"The run: `make demo` took {demo.get('make_demo_wall') or 'n/a'} wall time "
                 f"(its own timings: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items()) + ").", ""]
    if res.get("partial"):
        missing = [k for k in ("calibration", "ood", "embed", "fit") if k not in res]
        head += [f"**Partial results**: not yet measured: {', '.join(missing)}.", ""]
    parts = [_md_calibration, _md_ood, _md_embed, _md_fit]
    keys = ["calibration", "ood", "embed", "fit"]
    body = [line for key, part in zip(keys, parts, strict=True) if key in res for line in part(res)]
    return "\n".join(head + body)


def _md_calibration(res: dict[str, Any]) -> list[str]:
    cal = res["calibration"]
    m = cal.get("mean", {})
    lines = ["## Calibration (synthetic test split; fitted on val)", "",
             f"{cal.get('n_test_studies')} test studies, prompt set `{cal.get('prompt_set')}`, "
             f"{len(cal.get('findings', []))} calibrated findings.", "",
             "| finding | n | positives | ECE before | ECE after | Brier before | Brier after | AUROC before | AUROC after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f, v in cal.get("per_class", {}).items():
        lines.append(f"| {f} | {v['n']} | {v['n_positive']} | {_fmt(v['ece_before'])} | {_fmt(v['ece_after'])} | "
                     f"{_fmt(v['brier_before'])} | {_fmt(v['brier_after'])} | {_fmt(v['auroc_before'])} | "
                     f"{_fmt(v['auroc_after'])} |")
    lines.append(f"| **mean** | | | {_fmt(m.get('ece_before'))} | {_fmt(m.get('ece_after'))} | "
                 f"{_fmt(m.get('brier_before'))} | {_fmt(m.get('brier_after'))} | {_fmt(m.get('auroc_before'))} | "
                 f"{_fmt(m.get('auroc_after'))} |")
    if cal.get("uncalibrated"):
        lines += ["", "Uncalibrated: " + "; ".join(f"{k} ({v})" for k, v in cal["uncalibrated"].items())]
    return lines + [""]


def _md_ood(res: dict[str, Any]) -> list[str]:
    ood = res["ood"]
    ind, real, txt = ood["in_distribution_test_split"], ood["real_dicoms"], ood["text"]
    nc = real["non_chest"]
    return ["## Out-of-distribution flag", "",
              "| input | n | flagged | rate |", "|---|---|---|---|",
              f"| synthetic test split (in distribution) | {ind['n']} | {ind['flagged']} | {_fmt(ind['flag_rate'])} |",
              f"| real non-chest DICOMs (pydicom + pydicom-data, readable) | {nc['n']} | {nc['flagged']} | "
              f"{_fmt(nc['flag_rate'])} |",
              f"| ... by the header checks alone | {nc['n']} | | {_fmt(nc['header_checks_flag_rate'])} |",
              f"| ... by the embedding check alone | {nc['n_embedding_judged']} | | "
              f"{_fmt(nc['embedding_check_flag_rate'])} |",
              f"| ... by the image-feature check alone | {nc.get('n_features_judged', 0)} | | "
              f"{_fmt(nc.get('features_check_flag_rate'))} |",
              f"| test-report sentences as text queries ({'/'.join(txt['sections_trained_on'])}: the sections "
              f"the model was trained on) | {txt['test_report_sentences']['n']} | | "
              f"{_fmt(txt['test_report_sentences']['flag_rate'])} |",
              f"| ... sentences of the other sections (indication, comparison: never in its training text) | "
              f"{txt['other_section_sentences']['n']} | | {_fmt(txt['other_section_sentences']['flag_rate'])} |",
              f"| off-domain text queries | {txt['off_domain_queries']['n']} | | "
              f"{_fmt(txt['off_domain_queries']['flag_rate'])} |", "",
              f"Files: {real['n_files']}, readable by medvl: {real['n_readable']} (unreadable: "
              + ", ".join(f"{k} {v}" for k, v in real["unreadable"].items()) + "). "
              "First failing check on flagged non-chest files: "
              + ", ".join(f"{k} {v}" for k, v in nc["first_check"].items()) + ". "
              "Every failing check (a file can fail several; out of the files each check could judge): "
              + ", ".join(f"{k} {v}/{nc['judged_by'].get(k, 0)}" for k, v in nc["failing_checks"].items()) + ". "
              f"Not flagged: {', '.join(nc['not_flagged']) or 'none'}.", "",
              "Real chest radiographs: " + "; ".join(
                  f"{c['file']}: {'flagged - ' + c['reason'] if c['ood'] else 'not flagged'} "
                  f"(header checks {'failed' if c['header_flag'] else 'passed'})" for c in real["chest"]), "",
              f"In-distribution reasons: {ind['reasons'] or 'none'}; check_image {ind['seconds_per_image'] * 1000:.0f} "
              "ms per image (read + prepare + embed + checks).", ""]


def _md_embed(res: dict[str, Any]) -> list[str]:
    emb = res["embed"]
    return ["## `medvl embed` throughput", "",
              f"{emb['n_items']} test studies, 2 interleaved rounds, median: image only {_fmt(emb['image_items_per_s'], 1)} "
              f"items/s, image + report {_fmt(emb['image_report_items_per_s'], 1)} items/s; image-only / bare "
              f"`Pipeline.embed_images` loop = {_fmt(emb['image_vs_baseline_ratio'], 2)} (same process, same load). "
              f"Largest difference of a written vector from the bare loop's: {emb['max_abs_diff_vs_baseline']:.2e}.", ""]


def _md_fit(res: dict[str, Any]) -> list[str]:
    fit = res["fit"]
    return ["## End-of-training fit cost", "",
              f"`fit_model_dir` (calibration on {fit['n_validation']} val studies, profile, reference of "
              f"{fit['n_reference']} train studies): {_fmt(fit['fit_seconds'], 1)} s; the run trained for "
              f"{_fmt(fit['train_seconds_of_run'], 1)} s (ratio {_fmt(fit['fit_over_train'], 3)}; both under "
              "this machine's load).", ""]


def _save(res: dict[str, Any], out: Path) -> None:
    """``results.json`` and ``results.md``, written atomically; a partial run says which parts it has."""
    from medvl.atomic import write_text_atomic

    res["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    write_text_atomic(out / "results.json", json.dumps(res, indent=2, default=str) + "\n")
    write_text_atomic(out / "results.md", render_md(res))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "demo"), help="a run folder (model/, corpus/)")
    parser.add_argument("--embed-items", type=int, default=200, help="test studies for the throughput part")
    parser.add_argument("--out", default=str(HERE), help="where results.json / results.md go")
    parser.add_argument("--demo-wall", default=None,
                        help="how long `make demo` took to write the run, as measured (e.g. '6m07s, load 3.7'); recorded")
    args = parser.parse_args()
    import medvl

    run = Path(args.run)
    manifest = run / "corpus" / "manifest.jsonl"
    out = Path(args.out)
    res: dict[str, Any] = {"run": str(args.run), "machine": _machine(), "partial": True,
                           "command": " ".join(["python", *sys.argv])}
    summary = run / "summary.json"
    res["demo"] = {"make_demo_wall": args.demo_wall,
                   "timings_s": json.loads(summary.read_text()).get("timings_s") if summary.is_file() else None}
    pipe = medvl.load(run / "model", data={"batch_size": 32})
    t0 = time.perf_counter()
    res["calibration"], emb = calibration_part(pipe, manifest)
    _save(res, out)  # each part lands as it is measured (marked partial until the last)
    print(f"calibration: {json.dumps(res['calibration'].get('mean'))}", flush=True)
    res["ood"] = ood_part(pipe, manifest, emb)
    _save(res, out)
    print(f"ood: test {res['ood']['in_distribution_test_split']['flag_rate']:.3f}, non-chest "
          f"{res['ood']['real_dicoms']['non_chest']['flag_rate']:.3f}", flush=True)
    res["embed"] = embed_part(pipe, manifest, args.embed_items)
    _save(res, out)
    print(f"embed: {res['embed']['image_items_per_s']:.1f} items/s", flush=True)
    res["fit"] = fit_part(run)
    res["seconds"] = time.perf_counter() - t0
    res["partial"] = False
    _save(res, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Granularity ablation on the synthetic corpus: does each alignment term help?

Three arms, trained on identical data with the identical model, seed, optimizer,
schedule, batch and number of optimizer steps (equal compute = equal steps x batch):

* ``instance``: the global InfoNCE term alone;
* ``instance+token``: plus MGCA's token (word <-> patch) term;
* ``instance+token+prototype``: plus MGCA's cross-modal prototype term (MGCA's full
  objective).

Each trained model is evaluated on the test split by ``medvl.eval.evaluate``: zero-shot
mean AUROC, image->report R@5 and the grounding pointing game (and mask IoU) on the
annotated masks, plus two grounding references from ``grounding_extra``: the pointing
game through the global head (the map an instance-only model can give) and chance (mean
mask area). An untrained model (same init) is evaluated too. Wall time is recorded per
arm: the token term costs more per step, so equal steps is not equal seconds.

The corpus is generated once (seeded) and reused; preprocessed inputs are cached once
before the first arm so no arm pays for decoding DICOM. Arm order rotates with the seed
so a drifting machine load does not always hit the same arm.

Writes ``results.json`` and ``results.md`` next to this file (``--results-dir``), after
every run, so an interrupted benchmark still leaves its finished runs. Run::

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.ablation.run_ablation            # real size
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ablation.run_ablation --smoke    # minutes
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script as well as with -m
    sys.path.insert(0, str(REPO))

from benchmarks.ablation.report import aggregate, write_markdown

# MGCA's weights for its three terms (docs/losses.md: 1, 0.7, 0.5).
ARMS: dict[str, dict[str, Any]] = {
    "instance": {"instance": {"weight": 1.0}},
    "instance+token": {"instance": {"weight": 1.0}, "token": {"weight": 0.7}},
    "instance+token+prototype": {
        "instance": {"weight": 1.0}, "token": {"weight": 0.7}, "prototype": {"weight": 0.5},
    },
}

# The demo's model (configs/demo.yaml), so the answer is about the model the demo ships.
MODEL: dict[str, Any] = {
    "embed_dim": 128,
    "image": {"name": "resnet18", "in_channels": 1, "image_size": 128, "width": 16},
    "text": {"name": "bert", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
             "intermediate_size": 256, "max_length": 96},
}

EVAL: dict[str, Any] = {"n_bootstrap": 200, "plots": False, "progress": False, "hubness": "none", "seed": 0}
TASKS = ["zeroshot", "retrieval", "grounding"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ablation"), help="corpus, cache and runs (default runs/ablation)")
    p.add_argument("--results-dir", default=str(HERE), help="where results.json/.md go (default next to this file)")
    p.add_argument("--n-cxr", type=int, default=1000, help="chest radiograph studies in the corpus")
    p.add_argument("--synth-size", type=int, default=256, help="rendered radiograph side in pixels")
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (one run per arm each)")
    p.add_argument("--steps", type=int, default=250, help="optimizer steps per arm (equal compute)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--smoke", action="store_true", help="tiny size (120 studies, 6 steps, 1 seed) to check the wiring")
    p.add_argument("--render-only", metavar="INTERPRETATION_MD", default=None,
                   help="train nothing: store this hand-written interpretation in results.json and rewrite results.md")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_cxr, args.synth_size, args.seeds, args.steps, args.batch_size = 120, 128, [0], 6, 16
        args.work = str(Path(args.work).with_name(Path(args.work).name + "_smoke"))
        args.results_dir = str(Path(args.work) / "results")
    return args


def machine() -> dict[str, Any]:
    """Where the benchmark ran: platform, cores, threads, load, versions."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def make_corpus(work: Path, n_cxr: int, seed: int, synth_size: int) -> Path:
    """Generate the corpus once; reuse it when the parameters match."""
    from medvl.data.synth import generate_corpus

    corpus = work / "corpus"
    params = {"n_cxr": n_cxr, "n_ct": 0, "seed": seed, "image_size": synth_size}
    stamp, manifest = corpus / "ablation_params.json", corpus / "manifest.jsonl"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"[ablation] reusing corpus {corpus}", flush=True)
        return manifest
    print(f"[ablation] generating corpus {params}", flush=True)
    manifest = Path(generate_corpus(corpus, n_cxr=n_cxr, n_ct=0, seed=seed, image_size=synth_size,
                                    workers=1, progress=False))
    stamp.write_text(json.dumps(params))
    return manifest


def base_config(args: argparse.Namespace, manifest: Path, cache: Path) -> dict[str, Any]:
    """Everything an arm shares: only ``loss`` and ``seed`` are set per run."""
    return {
        "seed": 0,
        "data": {"manifest": str(manifest), "dims": 2, "image_size": args.image_size,
                 "batch_size": args.batch_size, "num_workers": 0, "max_words": 64, "augment": False,
                 "drop_last": True, "cache_dir": str(cache)},
        "model": copy.deepcopy(MODEL) | {"image": MODEL["image"] | {"image_size": args.image_size}},
        "train": {"max_steps": args.steps, "lr": args.lr, "weight_decay": 0.05, "warmup_ratio": 0.05,
                  # no validation: every arm keeps its last model (same steps, no selection effect)
                  "val_every_epoch": 0, "log_every": 1, "progress": False},
    }


def warm_cache(cfg: dict[str, Any], manifest: Path) -> tuple[dict[str, int], float]:
    """Preprocess every study once into the cache, so no arm is charged for decoding."""
    from medvl.data import build_dataset

    t0 = time.perf_counter()
    sizes = {}
    for split in ("train", "val", "test"):
        ds = build_dataset(cfg["data"], manifest, split)
        sizes[split] = len(ds)
        for i in range(len(ds)):
            ds[i]
    return sizes, time.perf_counter() - t0


def last_train_row(run_dir: Path) -> dict[str, float]:
    """The last ``split=train`` row of metrics.csv (loss terms at the end of training)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    rows = [r for r in csv.DictReader(path.open()) if r.get("split") == "train"]
    if not rows:
        return {}
    out = {}
    for k, v in rows[-1].items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def step_seconds(run_dir: Path, batch_size: int, skip: int = 2) -> float | None:
    """Median seconds per optimizer step from the engine's per-step ``samples_per_s`` (first steps skipped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    vals = sorted(batch_size / float(r["samples_per_s"]) for r in csv.DictReader(path.open())
                  if r.get("split") == "train" and r.get("samples_per_s") and int(r["step"]) > skip
                  and float(r["samples_per_s"]) > 0)
    return round(vals[len(vals) // 2], 3) if vals else None


def score(model: Any, manifest: Path, cfg: dict[str, Any], out_dir: Path, cases: list[Any]) -> dict[str, Any]:
    """Evaluate one model: the headline figures plus the grounding references."""
    import torch

    from benchmarks.ablation.grounding_extra import global_head_pointing
    from medvl.eval import evaluate

    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        res = evaluate(model, manifest, tasks=TASKS, out_dir=out_dir, data_cfg=cfg["data"], split="test", config=EVAL)
    gh = global_head_pointing(model, cases)
    zs, rt, gr = res["zeroshot"], res["retrieval"], res["grounding"]
    i2t, t2i = rt["image_to_report"], rt["report_to_image"]
    return {
        "zeroshot_mean_auroc": zs["mean_auroc"],
        "zeroshot_mean_auroc_ci": zs.get("mean_auroc_ci"),
        "zeroshot_per_class": {f: v["auroc"] for f, v in zs["per_class"].items()},
        "i2t_R@1": i2t["R@1"], "i2t_R@5": i2t["R@5"], "i2t_R@10": i2t["R@10"],
        "t2i_R@5": t2i["R@5"], "i2t_chance_R@5": min(1.0, 5 / max(1, i2t["gallery_size"])),
        "i2t_gallery_size": i2t["gallery_size"],
        "pointing_game": gr["pointing_game"], "mask_iou": gr["mask_iou"], "grounding_n": gr["n_cases"],
        "grounding_per_class": {f: v["pointing_game"] for f, v in gr["per_class"].items()},
        "pointing_game_global_head": gh["pointing_game"],
        "grounding_global_head_per_class": {f: v["pointing_game"] for f, v in gh["per_class"].items()},
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def render_only(results_dir: Path, interpretation: Path) -> int:
    """Attach a person's reading of the figures to an existing results.json and rewrite results.md."""
    path = results_dir / "results.json"
    report = json.loads(path.read_text())
    report["interpretation"] = interpretation.read_text().strip()
    path.write_text(json.dumps(report, indent=2, default=float))
    write_markdown(report, results_dir / "results.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(Path(args.results_dir), Path(args.render_only))
    import torch

    from benchmarks.ablation.grounding_extra import chance_pointing, load_cases
    from medvl.models import MedVLModel, build_model
    from medvl.train import train

    work, results_dir = Path(args.work), Path(args.results_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "granularity ablation (issue 5 point 4)",
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_average_1min_start": load_avg(),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.ablation.run_ablation", *(argv or sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results_dir")},
        "arms": {a: ARMS[a] for a in args.arms},
        "runs": [],
    }

    t0 = time.perf_counter()
    manifest = make_corpus(work, args.n_cxr, args.corpus_seed, args.synth_size)
    report["corpus_seconds"] = round(time.perf_counter() - t0, 1)
    cfg0 = base_config(args, manifest, work / "cache")
    sizes, warm_s = warm_cache(cfg0, manifest)
    steps_per_epoch = sizes["train"] // args.batch_size
    report.update(split_sizes=sizes, cache_warmup_seconds=round(warm_s, 1), steps_per_epoch=steps_per_epoch,
                  epochs=round(args.steps / max(1, steps_per_epoch), 2), model=MODEL, train=cfg0["train"], eval=EVAL)
    print(f"[ablation] splits {sizes}; {steps_per_epoch} steps per epoch, {args.steps} steps "
          f"= {report['epochs']} epochs; cache warm-up {warm_s:.0f} s", flush=True)
    if args.steps <= steps_per_epoch and "instance+token+prototype" in args.arms:
        print("[ablation] warning: the run ends inside epoch 0, where the prototypes are frozen", flush=True)

    # One-time costs (imports, first allocations) would otherwise land on the first arm's wall time.
    warm = copy.deepcopy(cfg0) | {"loss": {"terms": copy.deepcopy(ARMS[args.arms[-1]])}}
    warm["train"] = warm["train"] | {"max_steps": 2}
    t0 = time.perf_counter()
    train(warm, work / "warmup")
    report["warmup_train_seconds"] = round(time.perf_counter() - t0, 1)

    cases = load_cases(manifest, cfg0["data"], "test")
    report["grounding_chance"] = chance_pointing(cases)

    def save() -> None:
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        report["load_average_1min_end"] = load_avg()
        report["summary"] = aggregate(report["runs"], args.arms)
        (results_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
        write_markdown(report, results_dir / "results.md")

    for si, seed in enumerate(args.seeds):
        # Reference: the untrained model of this seed (the init every arm starts from).
        torch.manual_seed(seed)
        cfg = copy.deepcopy(cfg0) | {"seed": seed}
        untrained = build_model(cfg["model"])
        report["runs"].append({"arm": "untrained", "seed": seed, "load_1min": load_avg(),
                               **score(untrained, manifest, cfg, work / f"seed{seed}" / "untrained_eval", cases)})
        save()
        order = args.arms[si % len(args.arms):] + args.arms[: si % len(args.arms)]
        for arm in order:
            cfg = copy.deepcopy(cfg0) | {"seed": seed, "loss": {"terms": copy.deepcopy(ARMS[arm])}}
            run_dir = work / f"seed{seed}" / arm.replace("+", "_")
            load0 = load_avg()
            print(f"[ablation] seed {seed}, arm {arm}: training {args.steps} steps (load {load0})", flush=True)
            t0 = time.perf_counter()
            result = train(cfg, run_dir)
            train_s = time.perf_counter() - t0
            model = MedVLModel.from_pretrained(result.model_dir)
            rec = {"arm": arm, "seed": seed, "load_1min": load0, "steps": result.steps,
                   "train_seconds": round(train_s, 1),
                   "seconds_per_step": step_seconds(run_dir, args.batch_size),
                   "final_train_terms": {k: v for k, v in last_train_row(run_dir).items()
                                         if k.endswith("_loss") or k == "loss" or k == "epoch"},
                   **score(model, manifest, cfg, run_dir / "eval", cases)}
            report["runs"].append(rec)
            print(f"[ablation]   {train_s:.0f} s; AUROC {rec['zeroshot_mean_auroc']:.3f}, i2t R@5 {rec['i2t_R@5']:.3f}, "
                  f"pointing {rec['pointing_game']:.3f} (global head {rec['pointing_game_global_head']:.3f})", flush=True)
            save()
    save()
    print((results_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

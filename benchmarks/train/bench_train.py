"""Training throughput, peak memory and data-wait fraction of the engine on CPU.

For each config (``tiny`` and ``demo``: ``configs/<name>.yaml`` when the file exists,
else the stand-in below) on a synthetic corpus, it reports:

* ``engine``: ``medvl.train.train`` for a fixed number of steps - samples/s from the
  step timings the engine logs, the fraction of step time spent waiting for data,
  peak RSS;
* ``engine accum 2``: the same effective batch as two micro-batches through the
  feature cache, with a warm preprocessing cache;
* per-step cost on one fixed batch, interleaved: a bare reference loop (forward, loss,
  backward, AdamW), the engine's step, and the engine's step with accumulation 2 -
  ratios measured under the same machine load.

Prints a table and writes ``results.json`` and ``results.md`` next to this file with
the machine it ran on. Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train/bench_train.py
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Stand-ins used when configs/<name>.yaml does not exist (yet).
STAND_INS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": {"dims": 2, "image_size": 64, "batch_size": 8},
        "model": {"embed_dim": 32,
                  "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
                  "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                           "intermediate_size": 64, "max_length": 64}},
        "loss": {"terms": {"instance": {"weight": 1.0}, "token": {"weight": 0.5}}},
        "train": {"lr": 1e-3},
    },
    "demo": {
        "data": {"dims": 2, "image_size": 128, "batch_size": 16},
        "model": {"embed_dim": 128,
                  "image": {"name": "resnet18", "width": 32, "in_channels": 1, "image_size": 128},
                  "text": {"name": "bert", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                           "intermediate_size": 256, "max_length": 96}},
        "loss": {"terms": {"instance": {"weight": 1.0}, "token": {"weight": 0.5}, "prototype": {"weight": 0.2}}},
        "train": {"lr": 5e-4},
    },
}


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_bench_config(name: str, manifest: str) -> tuple[dict[str, Any], str]:
    from medvl.config import load_config, merge

    path = REPO / "configs" / f"{name}.yaml"
    if path.is_file():
        cfg, source = load_config(path), f"configs/{name}.yaml"
    else:
        cfg, source = copy.deepcopy(STAND_INS[name]), f"stand-in (configs/{name}.yaml absent)"
    cfg = merge(cfg, {"seed": 0, "data": {"manifest": manifest}})
    cfg.pop("demo", None)
    return cfg, source


# ------------------------------------------------------------------ one measurement


def run_engine(cfg: dict[str, Any], steps: int, out: Path) -> dict[str, Any]:
    from medvl.train import train

    cfg = copy.deepcopy(cfg)
    cfg["train"] = {**cfg.get("train", {}), "max_steps": steps, "log_every": 1, "progress": False,
                    "val_every_epoch": 0, "epochs": 1, "checkpoint_every_steps": None}
    t0 = time.perf_counter()
    train(cfg, out)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    rows = rows[2:] or rows  # the first steps pay one-off costs (allocator, cache fill)
    sps = [float(r["samples_per_s"]) for r in rows]
    wait = [float(r["data_wait_frac"]) for r in rows]
    compute = [x / max(1e-9, 1 - w) for x, w in zip(sps, wait, strict=True)]  # the same steps without the data waits
    return {"samples_per_s": len(sps) / sum(1 / s for s in sps), "data_wait_frac": sum(wait) / len(wait),
            "samples_per_s_compute": len(compute) / sum(1 / s for s in compute),
            "wall_s": wall, "steps": steps, "peak_rss_mb": _peak_rss_mb()}


def step_costs(cfg: dict[str, Any], reps: int) -> dict[str, Any]:
    """Seconds per step on one fixed batch, the three ways interleaved (so load hits all alike).

    * ``plain``: the shortest loop that trains - tokenize, both towers, loss, backward,
      ``torch.optim.AdamW.step``;
    * ``engine``: the engine's step - :func:`contrastive_step`, finiteness check,
      backward, unscale/clip, AdamW + schedule, logit-scale clamp;
    * ``accum2``: the engine's step on the same batch as two micro-batches through the
      feature cache.
    """
    import contextlib
    import math

    import torch

    from medvl.data import build_dataloader
    from medvl.losses import build_loss
    from medvl.models import build_model
    from medvl.train.config import TrainConfig
    from medvl.train.gradcache import MicroBatch, contrastive_step
    from medvl.train.optim import (
        build_optimizer,
        build_scheduler,
        step_optimizer,
        unscale_and_clip,
    )

    batch = next(iter(build_dataloader(cfg["data"], cfg["data"]["manifest"], "train", shuffle=False)))
    torch.manual_seed(0)
    model = build_model(cfg["model"])
    loss_fn = build_loss(cfg.get("loss"), embed_dim=model.config.get("embed_dim"))
    model.train()
    params = list(model.parameters()) + list(loss_fn.parameters())
    plain_opt = torch.optim.AdamW(params, lr=1e-5)
    tc = TrainConfig(lr=1e-5)
    opt = build_optimizer(list(model.named_parameters()) + list(loss_fn.named_parameters()), tc)
    sched = build_scheduler(opt, tc, 10 * reps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    n = len(batch["text"])

    def micro(lo: int, hi: int) -> MicroBatch:
        return MicroBatch(batch["image"][lo:hi], model.tokenize(batch["text"][lo:hi]), batch["labels"][lo:hi],
                          batch["study_id"][lo:hi])

    def plain() -> None:
        tok = model.tokenize(batch["text"])
        terms = loss_fn(model.encode_image(batch["image"]), model.encode_text(**tok),
                        logit_scale=model.logit_scale, labels=batch["labels"])
        terms["loss"].backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def engine(parts: list[tuple[int, int]]) -> None:
        step = contrastive_step(model, loss_fn, [micro(lo, hi) for lo, hi in parts],
                                autocast=contextlib.nullcontext, scale=scaler.scale)
        if not all(math.isfinite(float(v.detach())) for v in step.terms.values()):
            raise RuntimeError("non-finite loss in the benchmark")
        step.backward()
        unscale_and_clip(params, opt, scaler, 1.0)
        step_optimizer(opt, scaler, sched)
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))

    ways = {"plain": plain, "engine": lambda: engine([(0, n)]),
            "accum2": lambda: engine([(0, n // 2), (n // 2, n)])}
    times: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for i in range(reps + 2):
        for name in names[i % 3:] + names[:i % 3]:  # rotate the order every round
            t0 = time.perf_counter()
            ways[name]()
            if i >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    med = {k: _median(v) for k, v in times.items()}
    return {"batch": n, "reps": reps, "seconds_per_step": med,
            "engine_over_plain": med["plain"] / med["engine"], "accum2_over_engine": med["engine"] / med["accum2"]}


def _accum2(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    cfg["data"]["batch_size"] = max(1, cfg["data"]["batch_size"] // 2)
    cfg["train"] = {**cfg.get("train", {}), "accum_steps": 2}
    return cfg


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def timing(cfg: dict[str, Any], steps: int, rounds: int, out: Path) -> dict[str, Any]:
    """Plain loop, engine and engine with accumulation, alternated in this one process."""
    from medvl.data import build_dataloader

    cached = copy.deepcopy(cfg)
    cached["data"]["cache_dir"] = str(out / "cache")
    for _ in build_dataloader(cached["data"], cached["data"]["manifest"], "train", shuffle=False):
        pass  # fill the preprocessing cache once
    runs: dict[str, list[dict[str, Any]]] = {"engine": [], "cached": [], "accum2": []}
    for r in range(rounds):
        runs["engine"].append(run_engine(cfg, steps, out / f"engine{r}"))
        runs["cached"].append(run_engine(cached, steps, out / f"cached{r}"))
        runs["accum2"].append(run_engine(_accum2(cached), steps, out / f"accum{r}"))
    med = {f"{k}_{m}": _median([x[m] for x in v]) for k, v in runs.items()
           for m in ("samples_per_s", "samples_per_s_compute", "data_wait_frac")}
    return {"rounds": rounds, **med, "runs": runs, "steps": step_costs(cached, reps=max(6, steps))}


def one(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = spec["config"]
    if spec["kind"] == "timing":
        return timing(cfg, spec["steps"], spec["rounds"], Path(spec["out"]))
    if spec["kind"] == "accum2":
        cfg = _accum2(cfg)
    return run_engine(cfg, spec["steps"], Path(spec["out"]))


# --------------------------------------------------------------------------- driver


def _subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], check=False, capture_output=True, text=True,
                          env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--n-cxr", type=int, default=300, help="synthetic radiographs in the corpus")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10], help="steps per config")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of plain/engine/accum")
    parser.add_argument("--out", default=str(HERE), help="folder of results.json / results.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0

    from medvl.data.synth import generate_corpus

    results: dict[str, Any] = {"machine": _machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "configs": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        # the demo's corpus settings (image size...) when configs/demo.yaml gives them
        demo_path = REPO / "configs" / "demo.yaml"
        synth_kw: dict[str, Any] = {}
        if demo_path.is_file():
            from medvl.config import load_config

            synth_kw = dict((load_config(demo_path).get("demo") or {}).get("synth") or {})
        results["corpus"] = {"n_cxr": args.n_cxr, **synth_kw}
        manifest = str(generate_corpus(tmp / "corpus", n_cxr=args.n_cxr, n_ct=0, seed=0, **synth_kw))
        for name, steps in zip(args.configs, args.steps + args.steps[-1:] * len(args.configs), strict=False):
            cfg, source = load_bench_config(name, manifest)
            print(f"[bench] {name}: {source}, {steps} steps, batch {cfg['data'].get('batch_size')}", flush=True)
            row: dict[str, Any] = {"source": source, "batch_size": cfg["data"].get("batch_size"),
                                   "image_size": cfg["data"].get("image_size"),
                                   "num_workers": cfg["data"].get("num_workers", 0)}
            row["timing"] = t = _subprocess({"kind": "timing", "config": cfg, "steps": steps,
                                             "rounds": args.rounds, "out": str(tmp / f"t_{name}")})
            # peak memory: each variant alone in its own process
            row["engine_peak_rss_mb"] = _subprocess({"kind": "engine", "config": cfg, "steps": 3,
                                                     "out": str(tmp / f"m_{name}")})["peak_rss_mb"]
            row["accum2_peak_rss_mb"] = _subprocess({"kind": "accum2", "config": cfg, "steps": 3,
                                                     "out": str(tmp / f"ma_{name}")})["peak_rss_mb"]
            sc = t["steps"]
            results["configs"][name] = row
            print(f"[bench] {name}: engine {t['engine_samples_per_s']:.1f} samples/s, data wait "
                  f"{t['engine_data_wait_frac']:.1%} as configured; with a warm preprocessing cache "
                  f"{t['cached_samples_per_s']:.1f} samples/s, data wait {t['cached_data_wait_frac']:.1%}; "
                  f"peak RSS {row['engine_peak_rss_mb']:.0f} MB (accum 2: {row['accum2_peak_rss_mb']:.0f} MB); "
                  f"step time plain/engine {sc['engine_over_plain']:.2f}, engine/accum2 {sc['accum2_over_engine']:.2f}",
                  flush=True)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(_markdown(results))
    print(f"[bench] wrote {out / 'results.md'}")
    return 0


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# medvl.train engine benchmark (CPU)", "",
        (f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs ({m['affinity']} usable), torch "
        f"{m['torch']} with {m['torch_threads']} thread(s), OMP_NUM_THREADS={m['omp_num_threads']}, GPU: "
        f"{m['gpu'] or 'none'}. Run {r['started']}; 1-minute load average {m['load_average_1min']} at the start "
        "(a shared machine: absolute figures are noisy, the ratios measured within one run are the figures to read)."),
        f"Corpus: synthetic chest radiographs {r.get('corpus')}, train split.", "",
        "No GPU was lent to this task, so the ViT-B/16 + BERT-base bf16 step at batch 128 was not measured; `benchmarks/train/bench_step_gpu.py` measures it (engine vs plain loop, peak memory) when run on a GPU.", "",
        ("| config | batch | image | workers | samples/s | data wait | samples/s, warm cache | data wait, warm cache "
        "| peak RSS | accum 2 samples/s (warm cache) | accum 2 peak RSS | step s: plain / engine / accum 2 "
        "| plain / engine | engine / accum 2 |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["configs"].items():
        t = c["timing"]
        sc = t["steps"]
        sp = sc["seconds_per_step"]
        lines.append(
            f"| {name} ({c['source']}) | {c['batch_size']} | {c['image_size']} | {c['num_workers']} | "
            f"{t['engine_samples_per_s']:.1f} | {t['engine_data_wait_frac']:.1%} | {t['cached_samples_per_s']:.1f} | "
            f"{t['cached_data_wait_frac']:.1%} | {c['engine_peak_rss_mb']:.0f} MB | {t['accum2_samples_per_s']:.1f} | "
            f"{c['accum2_peak_rss_mb']:.0f} MB | {sp['plain']:.3f} / {sp['engine']:.3f} / {sp['accum2']:.3f} | "
            f"{sc['engine_over_plain']:.2f} | {sc['accum2_over_engine']:.2f} |")
    lines += [
        "", "Notes:",
        ("- samples/s is the harmonic mean over steps 3.. of the per-step figure the engine logs to metrics.csv "
        "(step time includes waiting for data); data wait is the mean fraction of step time spent waiting for "
        "the data loader. 'As configured' uses the config's data settings; 'warm cache' adds "
        "`data.cache_dir` after one pass has filled it."),
        ("- step s: seconds per step on one fixed batch, interleaved and rotated so machine load hits all three "
        "alike (medians): `plain` is the shortest loop that trains (tokenize, towers, loss, backward, AdamW); "
        "`engine` the engine's step (finiteness check, clipping, schedule, logit-scale clamp on top); `accum 2` "
        "the same batch as two micro-batches through the feature cache (same negatives; one extra forward pass "
        "per micro-batch, activations of half the batch). plain / engine is the engine's speed relative to the "
        "bare loop (1.0 = no overhead)."),
        ("- the loop runs (samples/s) alternate in one process for `rounds` rounds (medians shown); each peak "
        "RSS is measured in a process of its own (3 steps)."),
        ("- peak RSS is the process's maximum resident set (`resource.getrusage`), including ~0.3-0.5 GB "
        "of imported libraries."),
        "", "Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train/bench_train.py`.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

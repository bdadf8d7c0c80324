"""Time and peak memory of one training step per CT arm, arms alternating in one process.

Every arm's step (image tower on a batch of volumes, text tower, instance loss,
backward, AdamW step) runs on the same fixed batch of the benchmark's corpus, round
after round with the arm order rotating, so a drifting load on the shared machine
hits all arms alike. Reported per arm: the median CPU seconds per step (the process
runs one thread, so CPU time measures the work, not the neighbours), the median wall
seconds, their ratios to ``slices-mean``, and the peak resident memory a step needs
above the level before it (a 5 ms RSS sampler, ``benchmarks.encoders.common.PeakRSS``;
glibc is told to return freed blocks to the OS, ``MALLOC_MMAP_THRESHOLD_``, so the
resident size follows live tensors; the script re-executes itself to set it).

Writes ``step_cost.json`` and ``step_cost.md`` next to this file. Run after the
corpus exists (``run_ct3d`` or ``visibility`` generates it)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ct3d.step_cost
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.ct3d.common import ARMS, HERE, IMAGE_SIZE, REPO, experiment, load_avg, machine, make_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ct3d_bench"))
    p.add_argument("--n-ct", type=int, default=600)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--results-dir", default=str(HERE))
    args = p.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.ct3d.step_cost", *(argv or sys.argv[1:])], env)
    import gc

    import torch

    from benchmarks.encoders.common import PeakRSS
    from medvl.data import build_dataloader
    from medvl.losses import build_loss
    from medvl.models import build_model

    work = Path(args.work)
    manifest = make_corpus(work, args.n_ct, 0)
    cfg0 = experiment("slices-mean", manifest, work / "cache", seed=0, steps=1, batch_size=args.batch_size, lr=1e-3)
    batch = next(iter(build_dataloader(cfg0["data"], manifest, "train", shuffle=False)))
    setups = {}
    for arm in ARMS:
        torch.manual_seed(0)
        cfg = experiment(arm, manifest, None, seed=0, steps=1, batch_size=args.batch_size, lr=1e-3)
        model = build_model(copy.deepcopy(cfg["model"]))
        loss = build_loss(cfg["loss"], embed_dim=model.config["embed_dim"])
        opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
        n_image = sum(p.numel() for p in model.image_encoder.parameters()) if hasattr(model, "image_encoder") else None
        setups[arm] = (model.train(), loss.train(), opt, model.tokenize(list(batch["text"])), n_image)

    def step(arm: str) -> tuple[float, float, float]:
        model, loss, opt, tok, _ = setups[arm]
        gc.collect()
        with PeakRSS() as mem:
            c0, t0 = time.process_time(), time.perf_counter()
            out = loss(model.encode_image(batch["image"]), model.encode_text(**tok), logit_scale=model.logit_scale,
                       labels=batch["labels"], epoch=1)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return cpu, wall, mem.mib

    for arm in ARMS:  # warm-up: first allocations, optimizer state, lazy inits
        step(arm)
        step(arm)
    load0 = load_avg()
    runs: dict[str, list[tuple[float, float, float]]] = {arm: [] for arm in ARMS}
    arms = list(ARMS)
    for r in range(args.rounds):
        for arm in arms[r % len(arms):] + arms[: r % len(arms)]:
            runs[arm].append(step(arm))
    base = "slices-mean"
    med = {a: {"cpu_s": statistics.median(v[0] for v in runs[a]), "wall_s": statistics.median(v[1] for v in runs[a]),
               "peak_mib": max(v[2] for v in runs[a]), "median_peak_mib": statistics.median(v[2] for v in runs[a])}
           for a in ARMS}
    for a in ARMS:
        med[a]["cpu_ratio"] = med[a]["cpu_s"] / med[base]["cpu_s"]
        med[a]["wall_ratio"] = med[a]["wall_s"] / med[base]["wall_s"]
        med[a]["image_params_m"] = (setups[a][4] or 0) / 1e6
    import resource

    res = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "load_average_1min_start": load0, "load_average_1min_end": load_avg(),
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.ct3d.step_cost " + " ".join(argv or sys.argv[1:]),
        "batch_size": len(batch["study_id"]), "grid_DHW": IMAGE_SIZE, "rounds": args.rounds, "baseline": base,
        "per_arm": med, "raw_cpu_wall_mib": runs,
        "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.results_dir)
    (out / "step_cost.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    lines = ["# Step cost per CT arm (alternating in one process)", "",
             (f"Run {res['date_utc']} UTC on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} with "
              f"{m['torch_threads']} thread(s); load average {load0} -> {res['load_average_1min_end']} (shared "
              f"machine). Batch {res['batch_size']} volumes of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}x{IMAGE_SIZE[2]} "
              f"(D x H x W); one step = image + text towers, instance loss, backward, AdamW step; "
              f"{args.rounds} rounds, arms alternating. Peak MiB: resident memory above the level before the "
              f"step (max over rounds)."), "",
             "| arm | image params (M) | median CPU s / step | ratio | median wall s / step | ratio "
             "| peak MiB / step |",
             "|---|---|---|---|---|---|---|"]
    for a, v in med.items():
        lines.append(f"| {a} | {v['image_params_m']:.2f} | {v['cpu_s']:.2f} | {v['cpu_ratio']:.2f} | "
                     f"{v['wall_s']:.2f} | {v['wall_ratio']:.2f} | {v['peak_mib']:.0f} |")
    lines += ["", f"Whole-process peak {res['process_peak_mib']:.0f} MiB (all four models and their optimizers).",
              "", "Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ct3d.step_cost`."]
    (out / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

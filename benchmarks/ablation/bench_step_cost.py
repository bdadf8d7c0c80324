"""Cost of one training step per ablation arm, measured alternately in one process.

The ablation's per-arm wall times ran at different machine loads (the shared machine's
load fell from ~8 to ~3 during the run), so they cannot tell what the token and
prototype terms cost. Here every arm's step (forward of both towers, loss, backward,
AdamW step) runs on the same fixed batch of the ablation's corpus, arms alternating
round after round in one process, so a drifting load hits all arms alike; the medians
and their ratios to ``instance`` are the figures. The prototype term is timed unfrozen
(``epoch=1``), as in most of the ablation's steps.

Writes ``step_cost.json`` and ``step_cost.md`` next to this file. Run after
``run_ablation`` has generated the corpus::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ablation.bench_step_cost
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ablation"))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args(argv)
    import torch

    from benchmarks.ablation.run_ablation import ARMS, base_config, load_avg, machine
    from medvl.data import build_dataloader
    from medvl.losses import build_loss
    from medvl.models import build_model

    ns = argparse.Namespace(image_size=args.image_size, batch_size=args.batch_size, steps=1, lr=1e-3)
    work = Path(args.work)
    cfg = base_config(ns, work / "corpus" / "manifest.jsonl", work / "cache")
    batch = next(iter(build_dataloader(cfg["data"], cfg["data"]["manifest"], "train", shuffle=False)))
    setups = {}
    for arm, terms in ARMS.items():
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(cfg["model"]))
        loss = build_loss({"terms": copy.deepcopy(terms)}, embed_dim=model.config["embed_dim"])
        opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
        setups[arm] = (model.train(), loss.train(), opt, model.tokenize(list(batch["text"])))

    def step(arm: str) -> float:
        model, loss, opt, tok = setups[arm]
        t0 = time.perf_counter()
        out = loss(model.encode_image(batch["image"]), model.encode_text(**tok), logit_scale=model.logit_scale,
                   labels=batch["labels"], epoch=1)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return time.perf_counter() - t0

    for arm in ARMS:  # warm-up: first allocations, lazy inits
        step(arm)
        step(arm)
    load0 = load_avg()
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        order = list(ARMS)[r % 3:] + list(ARMS)[: r % 3]
        for arm in order:
            times[arm].append(step(arm))
    med = {arm: statistics.median(v) for arm, v in times.items()}
    res = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "load_average_1min_start": load0, "load_average_1min_end": load_avg(),
        "batch_size": len(batch["study_id"]), "image_size": args.image_size, "rounds": args.rounds,
        "median_step_seconds": med, "ratio_to_instance": {a: med[a] / med["instance"] for a in med},
        "step_seconds": times,
    }
    (HERE / "step_cost.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    lines = ["# Step cost per ablation arm (alternating in one process)", "",
             (f"Run {res['date_utc']} UTC on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} with "
             f"{m['torch_threads']} thread(s); load average {load0} -> {res['load_average_1min_end']} (shared machine). "
             f"Batch {res['batch_size']} at {args.image_size} px, the ablation's model; forward + loss + backward + "
             f"AdamW step, {args.rounds} rounds, arms alternating; prototype term unfrozen."), "",
             "| arm | median s / step | ratio to instance |", "|---|---|---|"]
    lines += [f"| {a} | {med[a]:.3f} | {res['ratio_to_instance'][a]:.2f} |" for a in ARMS]
    lines += ["", "Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ablation.bench_step_cost`."]
    (HERE / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One training step of a ViT-B/16 + BERT-base dual encoder at batch 128 in bf16: engine vs plain loop.

Random-initialised towers (no download) on random images and synthetic report texts, so
only the step is timed. Three ways, interleaved and rotated so the GPU's state affects
all alike, medians reported:

* ``plain``: the reference loop - autocast bf16 forward of both towers, loss, backward,
  fused AdamW step;
* ``engine``: the engine's step (``contrastive_step``, finiteness check, backward,
  unscale/clip, AdamW + schedule, logit-scale clamp);
* ``accum2``: the engine's step on the same 128 studies as two micro-batches of 64
  through the feature cache (same negatives, lower peak memory).

Peak GPU memory of each is measured separately (``torch.cuda.max_memory_allocated``).
Writes ``results_gpu.json`` / ``results_gpu.md`` next to this file. Run on a GPU::

    .venv/bin/python benchmarks/train/bench_step_gpu.py

``--smoke`` runs a tiny model on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent

VIT_B16_BERT_BASE = {
    "embed_dim": 512,
    "image": {"name": "vit", "in_channels": 3, "image_size": 224, "width": 768, "depth": 12, "patch_size": 16,
              "options": {"num_heads": 12}},
    "text": {"name": "bert", "hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072,
             "max_length": 128},
}
SMOKE = {
    "embed_dim": 16,
    "image": {"name": "vit", "in_channels": 3, "image_size": 32, "width": 32, "depth": 2, "patch_size": 16,
              "options": {"num_heads": 2}},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
             "max_length": 32},
}
WORDS = ["no", "acute", "cardiopulmonary", "process", "small", "left", "pleural", "effusion", "right", "lower", "lobe", "consolidation", "mild", "pulmonary", "edema", "cardiomegaly", "stable", "postoperative", "changes"]


def _reports(n: int, words: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)

    import torch

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

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    batch = 8 if args.smoke else args.batch
    model_cfg = SMOKE if args.smoke else VIT_B16_BERT_BASE
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device).train()
    loss_fn = build_loss({"terms": {"instance": {"weight": 1.0}}}, embed_dim=model_cfg["embed_dim"]).to(device)
    size = model_cfg["image"]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    texts = _reports(batch, 60, seed=0)
    params = list(model.parameters()) + list(loss_fn.parameters())
    on_gpu = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_gpu else contextlib.nullcontext
    plain_opt = torch.optim.AdamW(params, lr=1e-5, fused=on_gpu or None)
    tc = TrainConfig(lr=1e-5)
    opt = build_optimizer(list(model.named_parameters()) + list(loss_fn.named_parameters()), tc)
    sched = build_scheduler(opt, tc, 100 * args.reps)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling

    def tokens(lo: int, hi: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in model.tokenize(texts[lo:hi]).items()}

    def plain() -> None:
        with autocast():
            img, txt = model.encode_image(images), model.encode_text(**tokens(0, batch))
        terms = loss_fn(img, txt, logit_scale=model.logit_scale)
        terms["loss"].backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def engine(parts: list[tuple[int, int]]) -> None:
        micro = [MicroBatch(images[lo:hi], tokens(lo, hi), None, []) for lo, hi in parts]
        step = contrastive_step(model, loss_fn, micro, autocast=autocast, scale=scaler.scale)
        if not all(math.isfinite(float(v.detach())) for v in step.terms.values()):
            raise RuntimeError("non-finite loss")
        step.backward()
        unscale_and_clip(params, opt, scaler, 1.0)
        step_optimizer(opt, scaler, sched)
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))

    ways = {"plain": plain, "engine": lambda: engine([(0, batch)]),
            "accum2": lambda: engine([(0, batch // 2), (batch // 2, batch)])}

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    peak: dict[str, float | None] = {}
    for name, fn in ways.items():  # peak memory of each alone (after one warm-up step)
        fn()
        sync()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        peak[name] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    times: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for i in range(args.reps):
        for name in names[i % 3:] + names[:i % 3]:
            sync()
            t0 = time.perf_counter()
            ways[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if on_gpu else "cpu"},
        "model": "smoke" if args.smoke else "ViT-B/16 + BERT-base (random init)", "batch": batch,
        "precision": "bf16 autocast" if on_gpu else "fp32", "reps": args.reps,
        "seconds_per_step": med, "samples_per_s": {k: batch / v for k, v in med.items()},
        "peak_memory_gib": peak, "engine_over_plain": med["plain"] / med["engine"],
        "accum2_over_engine": med["engine"] / med["accum2"],
    }
    print(json.dumps(result, indent=2))
    if not args.smoke:
        out = Path(args.out)
        (out / "results_gpu.json").write_text(json.dumps(result, indent=2))
        lines = [
            "# Training step on a GPU: engine vs plain loop", "",
            (f"Device: {result['machine']['device']}; torch {result['machine']['torch']}; {result['model']}; "
            f"batch {batch}; {result['precision']}; median of {args.reps} interleaved steps."), "",
            "| way | s/step | samples/s | peak memory |", "|---|---|---|---|",
        ]
        for k in ways:
            mem = f"{peak[k]:.1f} GiB" if peak[k] is not None else "-"
            lines.append(f"| {k} | {med[k]:.3f} | {batch / med[k]:.0f} | {mem} |")
        lines += ["", (f"engine / plain speed: {result['engine_over_plain']:.2f}; accum 2 / engine speed: "
                  f"{result['accum2_over_engine']:.2f}."), ""]
        (out / "results_gpu.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

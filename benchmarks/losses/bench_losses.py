"""Speed and activation memory of each alignment term, relative to the instance term.

For a 2D radiograph batch (14x14 patch grid, 64 words) and a native-3D batch
(8x8x8 patch grid, 96 words) this times forward + backward of every term on random
embeddings and counts the bytes autograd saves for the backward pass (a
device-independent measure of activation memory, taken with
``torch.autograd.graph.saved_tensors_hooks``). Baselines run in the same process:

* every term is reported as a ratio to the instance term (the cheapest);
* GLoRIA's batched all-pairs computation is compared with a loop over reports
  (the structure of GLoRIA's released code), both built on our own pair scorer.

Prints the figures and writes ``results.json`` and ``results.md`` next to this file
(or ``--out``) with the machine they ran on. Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/losses/bench_losses.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medvl.losses import build_loss
from medvl.losses.token_gloria import GloriaConfig, gloria_pair_scores
from medvl.models.outputs import EncoderOutput

SHAPES = {
    "2d_14x14_T64": {"batch": 32, "grid": (14, 14), "words": 64},
    "3d_8x8x8_T96": {"batch": 16, "grid": (8, 8, 8), "words": 96},
}
TERMS = {
    "instance": {"instance": {}},
    "instance_soft": {"instance": {"soft_targets": True}},
    "token_dot": {"token": {}},
    "token_learned": {"token": {"attention": "learned", "num_heads": 4}},
    "gloria": {"gloria": {}},
    "prototype": {"prototype": {}},
}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        # The dev machine is shared; a high load makes absolute times noisy (ratios less so).
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def make_batch(batch: int, grid: tuple[int, ...], words: int, dim: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    n = 1
    for s in grid:
        n *= s
    mask = torch.ones(batch, words, dtype=torch.bool)
    lengths = torch.randint(words // 3, words + 1, (batch,), generator=g)
    mask &= torch.arange(words)[None] < lengths[:, None]
    labels = torch.randint(-1, 2, (batch, 14), generator=g).float()
    tensors = {
        "gi": torch.randn(batch, dim, generator=g), "gt": torch.randn(batch, dim, generator=g),
        "li": torch.randn(batch, n, dim, generator=g), "lt": torch.randn(batch, words, dim, generator=g),
        "ai": torch.rand(batch, n, generator=g), "at": torch.rand(batch, words, generator=g) * mask,
        "mt": mask, "labels": labels,
    }
    return {k: v.to(device) for k, v in tensors.items()} | {"grid": grid}


def outputs(b: dict) -> tuple[EncoderOutput, EncoderOutput]:
    leaves = {k: b[k].clone().requires_grad_(True) for k in ("gi", "gt", "li", "lt")}
    image = EncoderOutput(leaves["gi"], leaves["li"], None, b["grid"], b["ai"])
    text = EncoderOutput(leaves["gt"], leaves["lt"], b["mt"], None, b["at"])
    return image, text


def measure(fn, reps: int, device: str) -> tuple[float, int]:
    """Median seconds of ``fn()`` (forward + backward) and bytes saved for backward."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t.untyped_storage())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(saved.values())


def gloria_loop(image: EncoderOutput, text: EncoderOutput, cfg: GloriaConfig) -> torch.Tensor:
    """GLoRIA's loss with one report at a time against all images (the code's structure)."""
    regions, words = F.normalize(image.local_embeds, dim=-1), F.normalize(text.local_embeds, dim=-1)
    valid_r = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
    rows = []
    for t in range(words.shape[0]):
        z, _ = gloria_pair_scores(words[t : t + 1], text.local_mask[t : t + 1], regions, valid_r, cfg)
        rows.append(z)
    logits = cfg.similarity_scale * torch.cat(rows)
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)

    results: dict = {"machine": machine(), "dim": args.dim, "reps": args.reps, "shapes": {}}
    for shape_name, shape in SHAPES.items():
        batch = make_batch(shape["batch"], shape["grid"], shape["words"], args.dim, args.device)
        rows = {}
        for term_name, terms in TERMS.items():
            loss = build_loss({"terms": terms}, embed_dim=args.dim).to(args.device)
            scale = torch.tensor(2.0, device=args.device, requires_grad=True)

            def step(loss=loss, scale=scale, batch=batch) -> None:
                image, text = outputs(batch)
                loss(image, text, logit_scale=scale, labels=batch["labels"], epoch=1)["loss"].backward()

            sec, saved = measure(step, args.reps, args.device)
            rows[term_name] = {"seconds": sec, "saved_bytes": saved}
        base = rows["instance"]
        for r in rows.values():
            r["time_vs_instance"] = r["seconds"] / base["seconds"]
            r["memory_vs_instance"] = r["saved_bytes"] / max(base["saved_bytes"], 1)

        cfg = GloriaConfig()

        def loop_step(batch=batch, cfg=cfg) -> None:
            image, text = outputs(batch)
            gloria_loop(image, text, cfg).backward()

        loop_sec, loop_saved = measure(loop_step, args.reps, args.device)
        rows["gloria_loop_baseline"] = {
            "seconds": loop_sec, "saved_bytes": loop_saved,
            "batched_time_ratio": rows["gloria"]["seconds"] / loop_sec,
            "batched_memory_ratio": rows["gloria"]["saved_bytes"] / loop_saved,
        }
        results["shapes"][shape_name] = {"shape": {**shape, "grid": list(shape["grid"])}, "terms": rows}
        print(f"\n{shape_name} (B={shape['batch']}, grid={shape['grid']}, T={shape['words']}, D={args.dim})")
        for name, r in rows.items():
            extra = (f" x{r['time_vs_instance']:.1f} time, x{r['memory_vs_instance']:.1f} memory vs instance"
                     if "time_vs_instance" in r else
                     f" batched/loop: time x{r['batched_time_ratio']:.2f}, memory x{r['batched_memory_ratio']:.2f}")
            print(f"  {name:22s} {r['seconds'] * 1e3:9.1f} ms  {r['saved_bytes'] / 2**20:8.1f} MiB saved{extra}")

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Loss benchmark ({results['machine']['device']})", "",
             "```", json.dumps(results["machine"], indent=1), "```", ""]
    for shape_name, block in results["shapes"].items():
        lines += [f"## {shape_name}", "",
                  "| term | ms (fwd+bwd) | MiB saved for backward | vs instance / batched vs loop |",
                  "|---|---|---|---|"]
        for name, r in block["terms"].items():
            rel = (f"time x{r['time_vs_instance']:.1f}, memory x{r['memory_vs_instance']:.1f}"
                   if "time_vs_instance" in r else
                   f"batched/loop time x{r['batched_time_ratio']:.2f}, memory x{r['batched_memory_ratio']:.2f}")
            lines.append(f"| {name} | {r['seconds'] * 1e3:.1f} | {r['saved_bytes'] / 2**20:.1f} | {rel} |")
        lines.append("")
    (args.out / f"results{suffix}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Forward / training-step time and peak memory per sample of every 2D encoder at 224 and 512 px.

Usage: ``python -m benchmarks.encoders.bench_2d [--quick]``. Writes ``results_2d.json``
and ``results_2d.md``. Each (encoder, size) runs in a fresh process on one thread
(``OMP_NUM_THREADS``, default 1); ratios are against ResNet-18 at the same size,
measured in the same run, so a busy machine shifts absolute times more than ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.encoders.common import HERE, machine, run_worker, write_results

# the published sizes of each architecture (not the tiny test configs)
ENCODERS: dict[str, dict] = {
    "resnet18": {"name": "resnet18", "width": 64},
    "resnet50": {"name": "resnet50", "width": 64},
    "densenet121": {"name": "densenet121", "width": 64},
    "efficientnet-b0": {"name": "efficientnet-b0"},
    "efficientnet-lite0": {"name": "efficientnet-lite0"},
    "vit-b16 (monai)": {"name": "vit", "width": 768, "depth": 12, "patch_size": 16,
                        "options": {"num_heads": 12}},
    "swin-t (monai)": {"name": "swin", "width": 96, "options": {"depths": [2, 2, 6, 2]}},
    "vit-b16 (hf)": {"name": "hf-vit", "width": 768, "depth": 12, "patch_size": 16,
                     "options": {"num_heads": 12}},
    "swin-t (hf)": {"name": "hf-swin", "width": 96,
                    "options": {"num_heads": 3, "depths": [2, 2, 6, 2], "window_size": 7}},
    "convnext-t (hf)": {"name": "hf-convnext", "width": 96, "options": {"depths": [3, 3, 9, 3]}},
}
BASELINE = "resnet18"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="224 px only, three encoders")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", action="append", default=[],
                        help="re-measure these encoders (and the baseline) and merge them into "
                        "the existing results, e.g. after a load spike")
    args = parser.parse_args()
    sizes = [224] if args.quick else [224, 512]
    names = ["resnet18", "efficientnet-lite0", "vit-b16 (monai)"] if args.quick else list(ENCODERS)
    kept = []
    if args.only:
        names = [BASELINE] + [n for n in args.only if n != BASELINE]
        old = json.loads((HERE / "results_2d.json").read_text())["rows"]
        kept = [r for r in old if r["encoder"] not in names]
    rows = []
    for size in sizes:
        for name in names:
            cfg = dict(ENCODERS[name], in_channels=1, image_size=size)
            if name.startswith("swin-t (hf)") and size == 512:
                cfg["options"] = dict(cfg["options"], window_size=16)  # 512/32 = 16 cells
            batch = args.batch if size == 224 else 1
            res = run_worker("image", image_cfg=cfg, shape=[batch, 1, size, size])
            res.update(encoder=name, size=size, batch=batch,
                       measured_utc=time.strftime("%H:%M:%S", time.gmtime()),
                       load_1min=round(os.getloadavg()[0], 1))
            print(res, flush=True)
            rows.append(res)
    order = {n: i for i, n in enumerate(ENCODERS)}
    rows = sorted(kept + rows, key=lambda r: (r["size"], order.get(r["encoder"], 99)))
    for size in sizes:
        base = next((r for r in rows if r["encoder"] == BASELINE and r["size"] == size), None)
        for r in rows:
            if r["size"] == size and base and "error" not in r and "error" not in base:
                r["train_vs_resnet18"] = r["train_step_s_per_sample"] / base["train_step_s_per_sample"]
    lines = [
        "# 2D image encoders: time and memory per sample",
        "",
        f"Machine: {machine()}",
        "",
        ("Times are CPU seconds of the one-thread worker process (wall times, inflated by"
        " other jobs on the shared cores, are in the JSON). "
        "Single-channel input; forward = eval mode under no_grad; train step = forward +"
        " backward in train mode. Peak = resident memory above the level before the step,"
        f" per sample. Batch {args.batch} at 224 px, 1 at 512 px; one timed run after a"
        " warm-up forward. `x r18` = train step time relative to ResNet-18 at the same size;"
        " `load` = the machine's 1-minute load average when the row finished (2 cores"
        " shared with other work: rows measured under higher load are slower)."),
        "",
        "| encoder | px | params (M) | grid | forward s | forward MiB | train s | train MiB | x r18 | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['encoder']} | {r['size']} | error: {r['error']} |||||||")
            continue
        lines.append(
            f"| {r['encoder']} | {r['size']} | {r['params_m']:.1f} | {'x'.join(map(str, r['grid']))} "
            f"| {r['forward_s_per_sample']:.3f} | {r['forward_peak_mib_per_sample']:.0f} "
            f"| {r['train_step_s_per_sample']:.3f} | {r['train_step_peak_mib_per_sample']:.0f} "
            f"| {r.get('train_vs_resnet18', float('nan')):.2f} | {r.get('load_1min', '')} |"
        )
    write_results("results_2d", {"machine": machine(), "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

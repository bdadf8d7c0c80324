"""Volumes: slice pooling against native 3D, and the memory of a full-size CT.

Usage: ``python -m benchmarks.encoders.bench_3d [--quick]``. Writes ``results_3d.json``
and ``results_3d.md``.

1. Slice pooling (a 2D ResNet-18 per slice, attention pooling, chunks of 32 slices,
   checkpointed in training) against a native 3D ResNet-18 and a small 3D ViT, on a
   256x256x128 volume: forward and training-step time and peak memory per volume.
2. A 512x512x300 CT encoded by slice pooling over EfficientNet-Lite0 (the encoder
   with real ImageNet weights here), inference, with chunks of 16 and 64 slices:
   whole-process peak memory must stay under 8 GB.
"""

from __future__ import annotations

import argparse

from benchmarks.encoders.common import machine, run_worker, write_results

WIDTH = 32  # same width for both families, so the comparison is about 2D vs 3D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 64-slice volume, small CT")
    args = parser.parse_args()
    depth, side = (32, 128) if args.quick else (128, 256)
    vol = [1, 1, depth, side, side]
    cases = {
        "slice pooling, resnet18 2D (attention)": {
            "name": "resnet18", "width": WIDTH, "volume": "slices", "slice_pooling": "attention",
            "slice_chunk": 32},
        "slice pooling, resnet18 2D (mha adapter)": {
            "name": "resnet18", "width": WIDTH, "volume": "slices", "slice_pooling": "mha",
            "slice_chunk": 32},
        "native 3D resnet18": {"name": "resnet18-3d", "width": WIDTH, "volume": "native"},
        "native 3D ViT (192 wide, 6 layers, 16^3 patches)": {
            "name": "vit-3d", "width": 192, "depth": 6, "patch_size": 16, "image_size": side,
            "volume": "native", "options": {"num_heads": 3, "image_depth": depth}},
    }
    rows = []
    for label, cfg in cases.items():
        res = run_worker("image", image_cfg=cfg, shape=vol)
        res.update(case=label, shape=vol[2:])
        print(res, flush=True)
        rows.append(res)
    ct = [1, 1, 300, 512, 512] if not args.quick else [1, 1, 60, 512, 512]
    ct_rows = []
    for chunk in (16, 64):
        cfg = {"name": "efficientnet-lite0", "volume": "slices", "slice_pooling": "attention",
               "slice_chunk": chunk, "image_size": 512}
        res = run_worker("image", image_cfg=cfg, shape=ct, grad=False)
        res.update(case=f"CT {ct[4]}x{ct[3]}x{ct[2]}, lite0 slices, chunk {chunk}")
        print(res, flush=True)
        ct_rows.append(res)
    base = rows[0]
    lines = [
        "# Volume encoders: slice pooling vs native 3D",
        "",
        f"Machine: {machine()}",
        "",
        (f"Times are CPU seconds of the one-thread worker (wall times in the JSON). "
        f"Volume {vol[4]}x{vol[3]}x{vol[2]} (W x H x slices), one channel, batch 1. Forward = eval"
        " under no_grad; train = forward + backward in train mode (slice chunks are"
        " checkpointed). MiB = peak resident memory above the level before the step;"
        " process = whole-process peak (ru_maxrss). `x slice` = train time relative to the"
        " first row."),
        "",
        "| case | params (M) | tokens | forward s | forward MiB | train s | train MiB | process MiB | x slice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} ||||||||")
            continue
        ratio = r["train_step_s_per_sample"] / base["train_step_s_per_sample"] if "error" not in base else float("nan")
        lines.append(
            f"| {r['case']} | {r['params_m']:.1f} | {'x'.join(map(str, r['grid']))} "
            f"| {r['forward_s_per_sample']:.2f} | {r['forward_peak_mib_per_sample']:.0f} "
            f"| {r['train_step_s_per_sample']:.2f} | {r['train_step_peak_mib_per_sample']:.0f} "
            f"| {r['process_peak_mib']:.0f} | {ratio:.2f} |"
        )
    lines += ["", "## Full-size CT, inference", "",
              "| case | forward s | forward MiB | process peak MiB | under 8 GB |", "|---|---|---|---|---|"]
    for r in ct_rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} ||||")
            continue
        lines.append(
            f"| {r['case']} | {r['forward_s_per_sample']:.1f} | {r['forward_peak_mib_per_sample']:.0f} "
            f"| {r['process_peak_mib']:.0f} | {'yes' if r['process_peak_mib'] < 8192 else 'NO'} |"
        )
    write_results("results_3d", {"machine": machine(), "volume_rows": rows, "ct_rows": ct_rows},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""``medvl eval``: evaluate a trained model on a manifest split and write a report folder.

Example::

    medvl eval --model runs/demo/model --manifest corpus/manifest.jsonl \\
        --tasks zeroshot,retrieval,grounding,probe --out runs/demo/eval eval.n_bootstrap=500
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (from `medvl train`)")
    parser.add_argument("--manifest", required=True, help="manifest (JSONL)")
    parser.add_argument("--tasks", default="zeroshot,retrieval",
                        help="comma-separated: zeroshot, retrieval, grounding, probe (default zeroshot,retrieval)")
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and plots")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="split evaluated (default test)")
    parser.add_argument("--config", default=None,
                        help="experiment config for the data/eval sections (default: config.yaml next to the model)")
    parser.add_argument("--override-preprocessing", action="store_true",
                        help="use data settings that contradict the model's preprocessing.json (logged)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.n_bootstrap=200 data.batch_size=8")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def run(args: argparse.Namespace) -> int:

    from medvl.atomic import check_output_folder
    from medvl.eval.cli_common import find_experiment_config
    from medvl.eval.runner import evaluate
    from medvl.inference import load
    from medvl.runinfo import write_run_info

    out = check_output_folder(args.out)
    cfg, source = find_experiment_config(args.model, args.config, list(args.overrides))
    pipe = load(args.model, data=cfg.get("data"), override_preprocessing=args.override_preprocessing)
    print(f"[eval] model {args.model} (its preprocessing.json); batching from {source}; split {args.split}")
    res = evaluate(pipe, args.manifest, tasks=args.tasks, out_dir=out, split=args.split, config=cfg.get("eval"))
    write_run_info(out, cfg, (cfg.get("eval") or {}).get("seed", 0),
                   f"medvl eval --model {args.model} --manifest {args.manifest} --tasks {args.tasks} --split {args.split}")
    print(f"[eval] {res['n_studies']} studies, {len(res['skipped'])} skipped")
    if "zeroshot" in res:
        zs = res["zeroshot"]
        print(f"  zero-shot mean AUROC {_fmt(zs['mean_auroc'])} ({zs['prompt_set']}, {zs['scoring']}/{zs['ensemble']})"
              f"; multi-class accuracy {_fmt(zs['multiclass'].get('accuracy'))}")
        cal = zs.get("calibration") or {}
        if cal.get("available"):
            m = cal["mean"]
            print(f"  calibration ({len(cal['findings'])} findings): ECE {_fmt(m['ece_before'])} -> {_fmt(m['ece_after'])}, "
                  f"Brier {_fmt(m['brier_before'])} -> {_fmt(m['brier_after'])}, "
                  f"AUROC {_fmt(m['auroc_before'])} -> {_fmt(m['auroc_after'])}")
        else:
            print(f"  calibration: none ({cal.get('reason', 'not measured')}); scores are uncalibrated")
    if "retrieval" in res:
        for d in ("image_to_report", "report_to_image"):
            r = res["retrieval"][d]
            print(f"  {d}: R@1 {_fmt(r['R@1'])} R@5 {_fmt(r['R@5'])} R@10 {_fmt(r['R@10'])} "
                  f"median rank {_fmt(r['median_rank'])}")
    if "probe" in res:
        for name, r in res["probe"].get("fractions", {}).items():
            print(f"  linear probe {name} of labels: mean AUROC {_fmt(r['mean_auroc'])}")
    if "grounding" in res:
        g = res["grounding"]
        print(f"  grounding on {g['n_cases']} annotations: pointing game {_fmt(g['pointing_game'])}, "
              f"mask IoU {_fmt(g['mask_iou'])}")
    print(f"[eval] report: {out / 'results.json'}, {out / 'results.md'}")
    return 0

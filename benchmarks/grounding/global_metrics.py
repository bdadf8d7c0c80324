"""What a grounding run's choices cost the global metrics: zero-shot AUROC and retrieval.

Each trained run of ``run_grounding`` is loaded with ``medvl.load`` (its saved
preprocessing) and scored by ``medvl.eval``'s own ``evaluate`` on the test split: the
zero-shot mean AUROC over the corpus's findings (with its bootstrap CI) and image <->
report R@1/R@5. The grounding benchmark scores maps only; this tells whether a setting
that makes maps point (tiles, coordinates, a token term) pays for it in what the
instance term is for.

Run (after ``run_grounding``)::

    OMP_NUM_THREADS=1 python -m benchmarks.grounding.global_metrics --work runs/grounding \\
        --runs tc_instance/seed0 tc_instance_filip/seed0 --out benchmarks/grounding/tiles/global
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def score_run(run: Path) -> dict[str, Any]:
    """``medvl.eval``'s zero-shot and retrieval figures for one trained run (test split)."""
    from medvl.config import load_config
    from medvl.eval.runner import evaluate
    from medvl.inference import load

    cfg = load_config(run / "config.yaml")
    pipe = load(run / "model", data=cfg["data"])
    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate(pipe, cfg["data"]["manifest"], tasks="zeroshot,retrieval", out_dir=Path(tmp), split="test",
                       config={"n_bootstrap": 500})
    zs, rt = res["zeroshot"], res["retrieval"]
    return {"n_studies": res["n_studies"], "zeroshot_mean_auroc": zs["mean_auroc"],
            "zeroshot_mean_auroc_ci": zs.get("mean_auroc_ci"),
            "image_to_report": {k: rt["image_to_report"][k] for k in ("R@1", "R@5", "R@10")},
            "report_to_image": {k: rt["report_to_image"][k] for k in ("R@1", "R@5", "R@10")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--runs", nargs="+", required=True, help="run folders under <work>/runs, e.g. tc_instance/seed0")
    p.add_argument("--out", required=True, help="path stem of the .md/.json written")
    args = p.parse_args(argv)
    from benchmarks.ablation.run_ablation import load_avg, machine

    work = Path(args.work)
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                           "load_average_1min_start": load_avg(),
                           "command": " ".join(["python", "-m", "benchmarks.grounding.global_metrics",
                                                *(argv if argv is not None else sys.argv[1:])]),
                           "runs": {}}
    for r in args.runs:
        rec["runs"][r] = score_run(work / "runs" / r)
        v = rec["runs"][r]
        print(f"[global] {r}: zero-shot AUROC {v['zeroshot_mean_auroc']:.3f}, "
              f"R@5 i->r {v['image_to_report']['R@5']:.3f} r->i {v['report_to_image']['R@5']:.3f}", flush=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rec, indent=1))
    lines = ["# Global metrics of the grounding runs (medvl.eval, test split)", "",
             f"Run {rec['date_utc']} UTC, {rec['machine']['platform']}, {rec['machine']['cpu_count']} CPUs, "
             f"load {rec['load_average_1min_start']}; {rec['seconds']} s. Command: `{rec['command']}`. "
             "Zero-shot: mean AUROC over the corpus's findings with medvl's default prompts and its 95 % "
             "bootstrap CI (500 resamples over studies); retrieval: recall at K over the test split's studies.", "",
             "| run | studies | zero-shot mean AUROC [CI] | image->report R@1 / R@5 | report->image R@1 / R@5 |",
             "|---|---|---|---|---|"]
    for r, v in rec["runs"].items():
        ci = v["zeroshot_mean_auroc_ci"] or [float("nan")] * 2
        lines.append(f"| {r} | {v['n_studies']} | {v['zeroshot_mean_auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{v['image_to_report']['R@1']:.3f} / {v['image_to_report']['R@5']:.3f} | "
                     f"{v['report_to_image']['R@1']:.3f} / {v['report_to_image']['R@5']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do a trained model's image tokens know *where* a finding is? A linear-probe ceiling.

For each large finding, a logistic regression is fitted on the training split's image
tokens (the encoder's own features, before any head): a token is positive when the
finding's mask covers at least half of its grid cell, negative otherwise (other cells of
the same films). On the test split the probe's score over the grid is a heatmap, scored
with ``medvl.eval``'s pointing game like the benchmark's maps. The probe uses the masks,
which no alignment term sees, so it is not a grounding method: it bounds what a map read
from these tokens *could* point at, and separates "the features do not localise" from
"the alignment does not use what they localise".

Run (after ``run_grounding``)::

    OMP_NUM_THREADS=1 python -m benchmarks.grounding.probe --work runs/grounding \\
        --runs minilm_instance/seed0 minilm_instance_filip-mean/seed0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def encoder_tokens(model: Any, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, tuple[int, ...]]:
    """The image encoder's tokens ``(n, N, C)`` (before the heads) and their grid."""
    import torch

    out: list[np.ndarray] = []
    grid: tuple[int, ...] = ()
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            f = model.image_encoder(torch.from_numpy(images[s : s + batch_size]))
            grid = tuple(int(g) for g in f.grid)
            out.append(f.tokens[:, : int(np.prod(grid))].float().numpy())
    return np.concatenate(out), grid


def cell_cover(mask: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """Share of each grid cell the mask covers, row-major (the input side divides by the grid)."""
    gh, gw = grid
    h, w = mask.shape
    return mask.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)).ravel()


def probe_run(model: Any, train: tuple[np.ndarray, list[Any]], test: tuple[np.ndarray, list[Any]]) -> dict[str, Any]:
    """Per large finding: the probe's pointing game on the test split."""
    from sklearn.linear_model import LogisticRegression

    from benchmarks.grounding.evaluate import LARGE
    from medvl.eval.grounding import pointing_game, upsample

    tr_tok, grid = encoder_tokens(model, train[0])
    te_tok, _ = encoder_tokens(model, test[0])
    per: dict[str, Any] = {}
    for f in LARGE:
        x = np.concatenate([tr_tok[c.image_index] for c in train[1] if c.finding == f])
        y = np.concatenate([cell_cover(c.mask, grid) >= 0.5 for c in train[1] if c.finding == f])
        clf = LogisticRegression(max_iter=300).fit(x, y)
        hits = [pointing_game(upsample(clf.decision_function(te_tok[c.image_index]).reshape(grid), c.mask.shape),
                              c.mask) for c in test[1] if c.finding == f]
        per[f] = {"n": len(hits), "pointing_game": float(np.mean(hits))}
    n = sum(v["n"] for v in per.values())
    pooled = sum(v["pointing_game"] * v["n"] for v in per.values()) / n
    return {"grid": list(grid), "pooled": pooled, "per_finding": per}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--runs", nargs="+", required=True, help="run folders under <work>/runs, e.g. minilm_instance/seed0")
    p.add_argument("--out", default=str(HERE / "probe"))
    args = p.parse_args(argv)
    from benchmarks.ablation.run_ablation import load_avg, machine
    from benchmarks.grounding.evaluate import load_cases
    from medvl.config import load_config

    work = Path(args.work)
    t0 = time.perf_counter()
    first = work / "runs" / args.runs[0]
    data = load_config(first / "config.yaml")["data"]
    train, test = load_cases(data["manifest"], data, "train"), load_cases(data["manifest"], data, "test")
    rec: dict[str, Any] = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                           "load_average_1min_start": load_avg(),
                           "command": " ".join(["python", "-m", "benchmarks.grounding.probe", *(argv or sys.argv[1:])]),
                           "runs": {}}
    import torch

    from medvl.models import MedVLModel, build_model

    torch.manual_seed(0)
    models = {"untrained (random init, same architecture)": build_model(load_config(first / "config.yaml")["model"])}
    models |= {r: MedVLModel.from_pretrained(work / "runs" / r / "model") for r in args.runs}
    for r, model in models.items():
        rec["runs"][r] = probe_run(model, train, test)
        print(f"[probe] {r}: pooled {rec['runs'][r]['pooled']:.3f} "
              + ", ".join(f"{f} {v['pointing_game']:.2f}" for f, v in rec["runs"][r]["per_finding"].items()), flush=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rec, indent=1))
    lines = ["# Linear-probe ceiling: what the image tokens know about where a finding is", "",
             f"Run {rec['date_utc']} UTC, {rec['machine']['platform']}, {rec['machine']['cpu_count']} CPUs, "
             f"load {rec['load_average_1min_start']}; {rec['seconds']} s. Command: `{rec['command']}`. "
             "See the module docstring: probes are fitted on the training split's masks, so this bounds a map "
             "read from the tokens; it is not a grounding method.", "",
             "| run | grid | pooled (large) | " + " | ".join(next(iter(rec["runs"].values()))["per_finding"]) + " |",
             "|---|---|---|" + "---|" * len(next(iter(rec["runs"].values()))["per_finding"])]
    for r, v in rec["runs"].items():
        lines.append(f"| {r} | {v['grid'][0]}x{v['grid'][1]} | {v['pooled']:.3f} | "
                     + " | ".join(f"{x['pointing_game']:.2f}" for x in v["per_finding"].values()) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

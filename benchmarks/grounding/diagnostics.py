"""Do the grounding arms' loss terms fall? Loss trajectories read from the runs' ``metrics.csv``.

For every run under ``<work>/runs/<arm>/seed<k>/`` (left by ``run_grounding``), each logged
training loss term is averaged over windows of steps (the first logged steps, a few
middle windows, the last). Reference levels without learning: the instance loss of a
batch of B pairs starts at ln B; MGCA's token term contrasts each word with the other
words of its own report (and each patch with the other patches), so its halves start
near ln(words) and ln(patches) and only say that words (patches) attend to *different*
places from one another, not that a word attends to its finding in this image. Writes
``diagnostics.json`` / ``diagnostics.md``::

    .venv/bin/python -m benchmarks.grounding.diagnostics --work runs/grounding
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def trajectories(run_dir: Path, n_windows: int = 5, width: int = 20) -> dict[str, Any]:
    """Per loss column: mean over ``n_windows`` evenly spaced windows of ``width`` steps."""
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("split") == "train"]
    if not rows:
        return {}
    steps = [int(r["step"]) for r in rows]
    last = max(steps)
    starts = [round(i * max(0, last - width) / (n_windows - 1)) for i in range(n_windows)]
    cols = [c for c in rows[0] if c.endswith("_loss") or c == "loss"]
    out: dict[str, Any] = {"steps": last, "windows": [[s, s + width] for s in starts]}
    for c in cols:
        vals = []
        for s in starts:
            w = [float(r[c]) for r, st in zip(rows, steps, strict=True) if s <= st <= s + width and r.get(c)]
            vals.append(statistics.fmean(w) if w else float("nan"))
        out[c] = vals
    return out


def gain_cis(work: Path, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """95 % bootstrap CI (cases resampled) of each run's pointing game and pointing gain, large findings.

    Reads the per-case records ``run_grounding`` leaves in ``<run>/records.json`` (``hit``:
    the peak in this case's mask; ``hit_other``: share of the other test cases with the
    same phrase whose mask holds it).
    """
    import numpy as np

    from benchmarks.grounding.evaluate import LARGE

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for path in sorted(work.glob("runs/*/seed*/records.json")):
        recs = json.loads(path.read_text())
        name = f"{path.parent.parent.name} {path.parent.name}"
        for method, rs in recs.items():
            rs = [r for r in rs if r["finding"] in LARGE and r.get("hit_other") is not None
                  and not math.isnan(r["hit_other"])]
            if not rs:
                continue
            hit = np.array([r["hit"] for r in rs])
            gain = hit - np.array([r["hit_other"] for r in rs])
            idx = rng.integers(0, len(rs), size=(n_resamples, len(rs)))
            lo_h, hi_h = np.percentile(hit[idx].mean(1), [2.5, 97.5])
            lo_g, hi_g = np.percentile(gain[idx].mean(1), [2.5, 97.5])
            out[f"{name} {method}"] = {"n": len(rs), "pointing_game": float(hit.mean()), "pointing_ci": [lo_h, hi_h],
                                       "pointing_gain": float(gain.mean()), "gain_ci": [lo_g, hi_g]}
    return out


def grid_ceiling(cases: list[Any], grids: tuple[int, ...] = (4, 8, 16)) -> dict[str, Any]:
    """Pointing game of an oracle that knows each mask at token resolution.

    Per case and grid side g: the map is the mask's share of every token cell (the mask
    average-pooled to g x g), upsampled as ``medvl.eval`` upsamples a model's map and
    scored with its pointing game. What no model at that grid can beat.
    """
    import numpy as np

    from benchmarks.grounding.evaluate import LARGE
    from medvl.eval.grounding import pointing_game, upsample

    out: dict[str, Any] = {}
    for g in grids:
        hits: dict[str, list[float]] = {}
        for c in cases:
            h, w = c.mask.shape
            cell = c.mask[: h - h % g, : w - w % g].reshape(g, h // g, g, w // g).mean(axis=(1, 3))
            hits.setdefault(c.finding, []).append(float(pointing_game(upsample(cell, c.mask.shape), c.mask)))
        large = [v for f in LARGE for v in hits.get(f, [])]
        out[f"{g}x{g}"] = {"large": float(np.mean(large)) if large else float("nan"),
                           "per_finding": {f: float(np.mean(v)) for f, v in sorted(hits.items())}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--results-dir", default=str(HERE))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--ceiling", action="store_true", help="also the grid-resolution ceiling on the test masks")
    args = p.parse_args(argv)
    from medvl.atomic import write_text_atomic

    runs = {}
    for mpath in sorted(Path(args.work).glob("runs/*/seed*/metrics.csv")):
        runs[f"{mpath.parent.parent.name} {mpath.parent.name}"] = trajectories(mpath.parent)
    from benchmarks.ablation.run_ablation import load_avg, machine

    report = {"work": args.work, "machine": machine(), "load_1min": load_avg(), "ln_batch": math.log(args.batch_size), "runs": runs,
              "command": "python -m benchmarks.grounding.diagnostics " + " ".join(argv or sys.argv[1:])}
    report["gain_cis"] = gain_cis(Path(args.work))
    if args.ceiling:
        from benchmarks.grounding.evaluate import load_cases

        data = {"manifest": str(Path(args.work) / "corpus" / "manifest.jsonl"), "dims": 2,
                "image_size": args.image_size, "augment": False, "cache_dir": str(Path(args.work) / "cache")}
        _, cases = load_cases(data["manifest"], data, "test")
        report["grid_ceiling"] = grid_ceiling(cases)
    write_text_atomic(Path(args.results_dir) / "diagnostics.json", json.dumps(report, indent=1))
    lines = ["# Grounding runs: loss terms over training", "",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs (shared), load "
             f"{report['load_1min']}. Command: `{report['command']}`. Each cell: mean of the logged training value over a window of "
             f"steps (windows in the header of each run). ln(batch) = {report['ln_batch']:.3f} is the instance "
             "loss of an untrained model; the token term's halves start near ln(words) and ln(patches) "
             "(64 patches: 4.16).", ""]
    if "grid_ceiling" in report:
        gc = report["grid_ceiling"]
        finds = list(next(iter(gc.values()))["per_finding"])
        lines += [f"## Grid ceiling: pointing game of an oracle map that knows the mask at token resolution "
                  f"({args.image_size} px input)", "",
                  "| grid | large pooled | " + " | ".join(finds) + " |", "|---|---|" + "---|" * len(finds)]
        for g, v in gc.items():
            lines.append(f"| {g} | {v['large']:.3f} | " + " | ".join(f"{v['per_finding'][f]:.3f}" for f in finds)
                         + " |")
        lines.append("")
    if report["gain_cis"]:
        lines += ["## Pointing game and image-specific gain per run, large findings, 95 % bootstrap CI over cases", "",
                  "| run | map | cases | pointing game [CI] | pointing gain (own - other patients' masks) [CI] |",
                  "|---|---|---|---|---|"]
        for key, v in report["gain_cis"].items():
            run, method = key.rsplit(" ", 1)
            lines.append(f"| {run} | {method} | {v['n']} | {v['pointing_game']:.3f} [{v['pointing_ci'][0]:.3f}, "
                         f"{v['pointing_ci'][1]:.3f}] | {v['pointing_gain']:+.3f} [{v['gain_ci'][0]:+.3f}, "
                         f"{v['gain_ci'][1]:+.3f}] |")
        lines.append("")
    for name, t in runs.items():
        if not t:
            continue
        win = ", ".join(f"{a}-{b}" for a, b in t["windows"])
        lines += [f"## {name} ({t['steps']} steps; windows {win})", "", "| term | " + " | ".join(
            f"steps {a}-{b}" for a, b in t["windows"]) + " |", "|---|" + "---|" * len(t["windows"])]
        for k, v in t.items():
            if k in ("steps", "windows"):
                continue
            lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
        lines.append("")
    write_text_atomic(Path(args.results_dir) / "diagnostics.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

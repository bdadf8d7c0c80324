"""Aggregation over seeds and the markdown table of the granularity ablation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# (key in a run record, column title)
METRICS: list[tuple[str, str]] = [
    ("zeroshot_mean_auroc", "zero-shot mean AUROC"),
    ("i2t_R@5", "image->report R@5"),
    ("pointing_game", "pointing game (local heads)"),
    ("mask_iou", "mask IoU (local heads)"),
    ("pointing_game_global_head", "pointing game (global head)"),
    ("train_seconds", "train wall s"),
    ("seconds_per_step", "s / step"),
]
HEADLINE = ["zeroshot_mean_auroc", "i2t_R@5", "pointing_game", "pointing_game_global_head"]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; 0 for one value), min, max and n."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "min": min(vals), "max": max(vals)}


def aggregate(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per arm: stats of every metric over seeds; per trained arm: paired differences to ``instance``.

    A paired difference is taken within a seed (same init and data order), which removes
    the between-seed variation the arms share.
    """
    out: dict[str, Any] = {"per_arm": {}, "paired_vs_instance": {}}
    for arm in ["untrained", *arms]:
        rs = [r for r in runs if r["arm"] == arm]
        if rs:
            out["per_arm"][arm] = {k: stats([r.get(k) for r in rs]) for k, _ in METRICS}
    base = {r["seed"]: r for r in runs if r["arm"] == "instance"}
    for arm in arms:
        if arm == "instance":
            continue
        pairs = [(r, base[r["seed"]]) for r in runs if r["arm"] == arm and r["seed"] in base]
        if not pairs:
            continue
        out["paired_vs_instance"][arm] = {}
        for k in HEADLINE + ["train_seconds"]:
            diffs = [a[k] - b[k] for a, b in pairs if _finite(a.get(k)) and _finite(b.get(k))]
            d = stats(diffs)
            d["diffs"] = diffs
            d["same_sign_all_seeds"] = bool(diffs) and (all(x > 0 for x in diffs) or all(x < 0 for x in diffs))
            out["paired_vs_instance"][arm][k] = d
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "-"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def verdicts(summary: dict[str, Any]) -> list[str]:
    """Plain sentences derived from the numbers (no judgement beyond sign and spread)."""
    lines = []
    names = dict(METRICS)
    for arm, per in summary.get("paired_vs_instance", {}).items():
        for k in HEADLINE:
            d = per.get(k)
            if not d or d["mean"] is None:
                continue
            n = d["n"]
            if n > 1 and d["same_sign_all_seeds"] and abs(d["mean"]) > d["std"]:
                how = "consistently " + ("higher" if d["mean"] > 0 else "lower")
            elif n > 1:
                how = "not consistent across seeds (differences change sign or are smaller than their spread)"
            else:
                how = "one seed only, no spread to judge against"
            lines.append(f"- `{arm}` vs `instance`, {names[k]}: {d['mean']:+.3f} "
                         f"(per seed {', '.join(f'{x:+.3f}' for x in d['diffs'])}): {how}.")
        pa = summary["per_arm"]
        t, b = pa.get(arm, {}).get("train_seconds", {}), pa.get("instance", {}).get("train_seconds", {})
        ts, bs = pa.get(arm, {}).get("seconds_per_step", {}), pa.get("instance", {}).get("seconds_per_step", {})
        if t.get("mean") and b.get("mean"):
            step = (f", median step {ts['mean']:.2f} s vs {bs['mean']:.2f} s ({ts['mean'] / bs['mean']:.2f}x)"
                    if ts.get("mean") and bs.get("mean") else "")
            lines.append(f"- `{arm}` cost: training wall time {t['mean']:.0f} s vs {b['mean']:.0f} s for `instance` "
                         f"({t['mean'] / b['mean']:.2f}x) for the same steps{step}.")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """``results.md``: settings, machine, the table (mean ± sd over seeds) and derived statements."""
    s = report["settings"]
    m = report["machine"]
    summ = report.get("summary", {})
    chance = report.get("grounding_chance", {})
    per_arm = summ.get("per_arm", {})
    lines = [
        "# Granularity ablation: instance vs + token vs + token + prototype",
        "",
        (f"Run {report['date_utc']} UTC, {report.get('total_seconds', 0) / 60:.1f} min in all. "
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['usable_cpus']} usable), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), OMP_NUM_THREADS={m['omp_num_threads']}, GPU: {m['gpu'] or 'none'}. "
        f"1-minute load average {report.get('load_average_1min_start')} at the start, "
        f"{report.get('load_average_1min_end')} at the end (a shared machine: wall times are noisy)."),
        "",
        (f"Corpus: {s['n_cxr']} synthetic chest radiographs rendered at {s['synth_size']} px (corpus seed "
        f"{s['corpus_seed']}), splits {report.get('split_sizes')}. Model: the demo's dual encoder "
        f"(ResNet-18 width 16 at {s['image_size']} px, 2-layer BERT 128, embed 128). Every arm: batch "
        f"{s['batch_size']}, {s['steps']} AdamW steps (lr {s['lr']}, 5% warmup, cosine; "
        f"{report.get('steps_per_epoch')} steps per epoch = {report.get('epochs')} epochs), last model kept "
        f"(no validation selection), training seeds {s['seeds']}. Loss weights (MGCA's): instance 1, token 0.7, "
        "prototype 0.5 (500 prototypes, frozen in epoch 0). Evaluation on the test split."),
        "",
        ("Equal compute means equal optimizer steps on equal batches. The token and prototype terms cost more "
         "per step: the controlled figure is `step_cost.md` (arms alternating in one process); the wall times "
         "below ran at whatever load the shared machine had at the time (see the per-run load)."),
        "",
        "| arm | " + " | ".join(t for _, t in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for arm, st in per_arm.items():
        lines.append(f"| {arm} | " + " | ".join(
            _fmt(st.get(k, {}), 1 if k == "train_seconds" else 3) if not (arm == "untrained" and k in
            ("train_seconds", "seconds_per_step")) else "-" for k, _ in METRICS) + " |")
    runs = report.get("runs", [])
    r5_chance = next((r["i2t_chance_R@5"] for r in runs if "i2t_chance_R@5" in r), None)
    lines += [
        "",
        (f"Values are mean ± sample sd over seeds (one value when one seed ran). Chance: AUROC 0.5; "
        f"image->report R@5 {r5_chance if r5_chance is None else f'{r5_chance:.3f}'} "
        f"(5 / {next((r['i2t_gallery_size'] for r in runs), '?')} unique test reports); pointing game "
        f"{chance.get('pointing_game', float('nan')):.3f} (mean mask area on the model grid, "
        f"{chance.get('n_cases', 0)} annotated findings)."),
        "",
        ("*pointing game (local heads)* is `medvl.eval`'s: the phrase's word tokens against the image tokens, both "
        "through the local projection heads that only the token term trains. *pointing game (global head)* "
        "projects every image token with the global image head and compares it with the phrase's global "
        "embedding, the map an instance-only model can give (`grounding_extra.py`)."),
        "",
        "## Per run",
        "",
        "| arm | seed | AUROC | i2t R@1 | i2t R@5 | t2i R@5 | pointing | IoU | pointing (global head) | train s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['zeroshot_mean_auroc']:.3f} | {r['i2t_R@1']:.3f} | {r['i2t_R@5']:.3f} | "
            f"{r['t2i_R@5']:.3f} | {r['pointing_game']:.3f} | {r['mask_iou']:.3f} | "
            f"{r['pointing_game_global_head']:.3f} | {r.get('train_seconds', '-')} | {r.get('load_1min')} |")
    findings = sorted({f for r in runs for f in r.get("grounding_per_class", {})})
    if findings:
        lines += ["", "## Pointing game per finding (local heads / global head, mean over seeds)", "",
                  "| arm | " + " | ".join(f"{f} (chance {chance['per_class'].get(f, {}).get('pointing_game', float('nan')):.2f}, "
                                         f"n={chance['per_class'].get(f, {}).get('n', 0)})" for f in findings) + " |",
                  "|---|" + "---|" * len(findings)]
        for arm in per_arm:
            rs = [r for r in runs if r["arm"] == arm]
            cells = []
            for f in findings:
                a = stats([r["grounding_per_class"].get(f) for r in rs])["mean"]
                b = stats([r["grounding_global_head_per_class"].get(f) for r in rs])["mean"]
                cells.append("-" if a is None else f"{a:.2f} / {b:.2f}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences to `instance` (same seed)", "", *verdicts(summ)]
    if report.get("interpretation"):
        lines += ["", "## Interpretation", "", report["interpretation"]]
    lines += ["", f"Regenerate: `{report['command']}` (see docs/ablation.md)."]
    path.write_text("\n".join(lines) + "\n")

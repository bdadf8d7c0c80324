"""Aggregate the grounding runs over seeds and write ``results.md``."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.grounding.evaluate import LARGE

#: Figures aggregated per arm and map method: (label, path into a run's summary).
FIGURES = [
    ("pointing (large, pooled)", ("large", "pointing_game")),
    ("pointing (large, macro)", ("large", "pointing_game_macro")),
    ("pointing (all findings)", ("all", "pointing_game")),
    ("pointing on other patients' masks", ("large", "pointing_game_other")),
    ("pointing gain (own - other)", ("large", "pointing_gain")),
    ("side accuracy", ("large", "lateral", "side_accuracy")),
    ("side acc., phrase without side", ("large", "lateral", "no_side_side_accuracy")),
    ("side acc., opposite side in phrase", ("large", "lateral", "opposite_side_accuracy")),
    ("corr(map, mask)", ("large", "lateral", "corr_mask")),
    ("corr(map, mirrored mask)", ("large", "lateral", "corr_mirror")),
    ("corr(map, other finding's map)", ("large", "corr_other_phrase")),
]


def _get(d: Any, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return float(d) if isinstance(d, (int, float)) else None


def _ms(vals: list[float]) -> dict[str, Any]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0, "values": []}
    sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals), "values": vals}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm and method: mean and sd over seeds of every figure, plus cost."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    out: dict[str, Any] = {}
    for arm, rs in arms.items():
        a: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "steps": rs[0]["steps"],
                             "train_seconds": _ms([r["train_seconds"] for r in rs]),
                             "train_cpu_seconds": _ms([r.get("train_cpu_seconds") for r in rs]),
                             "seconds_per_step": _ms([r.get("seconds_per_step") for r in rs])}
        for method in ("local", "cam"):
            a[method] = {label: _ms([_get(r["scores"][method], path) for r in rs]) for label, path in FIGURES}
            a[method]["per_finding"] = {
                f: _ms([_get(r["scores"][method], ("large", "per_finding", f, "pointing_game")) for r in rs])
                for f in LARGE}
        out[arm] = a
    return out


def _fmt(x: dict[str, Any]) -> str:
    if not x or x.get("n", 0) == 0:
        return "-"
    if x["n"] == 1:
        return f"{x['mean']:.3f}"
    return f"{x['mean']:.3f} ± {x['sd']:.3f}"


def _ref(report: dict[str, Any], name: str, path: tuple[str, ...]) -> str:
    v = _get(report.get("references", {}).get(name, {}), path)
    return "-" if v is None else f"{v:.3f}"


def write_report(report: dict[str, Any], path: Path) -> None:
    m = report["machine"]
    s = report["settings"]
    lines = [
        "# Grounding: token-level terms against the instance term's CAM map", "",
        (f"Run {report['date_utc']} UTC (this session: {report.get('total_seconds_this_session', 0) / 60:.0f} min). "
         f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} thread(s), "
         f"OMP_NUM_THREADS={m['omp_num_threads']}, GPU: {m['gpu'] or 'none'}; shared with other jobs (1-minute load "
         f"{report.get('load_average_1min_start')} at the start, {report.get('load_average_1min_end')} at the end)."),
        "",
        f"Command: `{report['command']}`", "",
        (f"Corpus: {s['n_cxr']} synthetic chest radiographs (corpus seed {s['corpus_seed']}), splits "
         f"{report['split_sizes']}. Model: ResNet-18 width 16 at {s['image_size']} px (a "
         f"{report['grid'][0]}x{report['grid'][1]} token grid, random init), "
         + ("the real all-MiniLM-L6-v2 frozen (its features cached; heads train)" if s.get("text") == "minilm"
            else "2-layer BERT 128, random init") + ", embed 128. Every arm: "
         f"batch {s['batch_size']}, AdamW lr {s['lr']}, 5 % warmup then cosine, {s['steps']} steps "
         f"(~{report['epochs']} epochs), last model kept; seeds {s['seeds']}."),
        "",
        "Scored on the test split's annotated findings; *large* = " + ", ".join(LARGE) + ". `local`: the local heads "
        "(`medvl.eval`'s map, what a token term trains); `cam`: `medvl.inference`'s class-activation map, every image "
        "token through the global head against the phrase's global embedding. Values are mean ± sd over seeds.", "",
    ]
    if "wall_steps" in report:
        c = report["step_cost"]
        ratios = ", ".join(f"{a} {v:.2f}" for a, v in c["ratio_to_instance"].items())
        lines += [(f"Equal wall time: step cost relative to `instance` in CPU seconds (one thread; what a dedicated "
                   f"core would spend as wall time), measured with the arms' steps alternating in one process "
                   f"({c['rounds']} rounds, batch {c['batch_size']}): {ratios}. `instance@wall` is the instance "
                   f"arm trained for {report['wall_steps']} steps, the time the costliest token arm measured "
                   f"({', '.join(report.get('wall_arms_measured', []))}) needs for {s['steps']}. The measured "
                   f"training CPU seconds of every arm are in the cost table below."), ""]
    summary = report.get("summary", {})
    head = "| arm | map | " + " | ".join(label for label, _ in FIGURES) + " |"
    lines += ["## Large findings", "", head, "|" + "---|" * (len(FIGURES) + 2)]
    for name in ("chance", "prior", "side_prior"):
        cells = [_ref(report, name, path) for _, path in FIGURES]
        label = {"chance": "chance (mask area)", "prior": "prior: mean training mask",
                 "side_prior": "prior: mean training mask on the stated side"}[name]
        lines.append(f"| {label} | - | " + " | ".join(cells) + " |")
    for arm, a in summary.items():
        for method in ("local", "cam"):
            lines.append(f"| {arm} ({a['steps']} steps) | {method} | "
                         + " | ".join(_fmt(a[method][label]) for label, _ in FIGURES) + " |")
    lines += ["", "## Pointing game per large finding", "",
              "| arm | map | " + " | ".join(LARGE) + " |", "|" + "---|" * (len(LARGE) + 2)]
    for name in ("chance", "prior", "side_prior"):
        lines.append(f"| {name} | - | " + " | ".join(
            _ref(report, name, ("large", "per_finding", f, "pointing_game")) for f in LARGE) + " |")
    for arm, a in summary.items():
        for method in ("local", "cam"):
            lines.append(f"| {arm} | {method} | " + " | ".join(_fmt(a[method]["per_finding"][f]) for f in LARGE) + " |")
    lines += ["", "## Cost", "", "| arm | steps | train CPU s | train wall s (shared machine) | median wall s / step |",
              "|---|---|---|---|---|"]
    for arm, a in summary.items():
        lines.append(f"| {arm} | {a['steps']} | {_fmt(a['train_cpu_seconds'])} | {_fmt(a['train_seconds'])} | "
                     f"{_fmt(a['seconds_per_step'])} |")
    lines += ["", "## Per run", "", "| arm | seed | steps | local (large) | cam (large) | train s | load |",
              "|---|---|---|---|---|---|---|"]
    for r in report.get("runs", []):
        lines.append(f"| {r['arm']} | {r['seed']} | {r['steps']} | "
                     f"{r['scores']['local']['large']['pointing_game']:.3f} | "
                     f"{r['scores']['cam']['large']['pointing_game']:.3f} | {r['train_seconds']:.0f} | "
                     f"{r.get('load_1min_start')} |")
        for method, ch in (r.get("medvl_eval_check") or {}).items():
            lines.append(f"|  | check: `medvl.eval.evaluate_grounding(method={method!r})` pointing game "
                         f"{ch['medvl_eval']:.4f} (n={ch['n_medvl_eval']}) vs this benchmark's {method} map "
                         f"{ch['ours']:.4f} (n={ch['n_ours']}) | | | | | |")
    curves = [(r["arm"], r["seed"], r["curve"]) for r in report.get("runs", []) if r.get("curve")]
    if curves:
        lines += ["", "## Learning curves (large findings, pooled pointing game local / cam)", ""]
        for arm, seed, curve in curves:
            pts = ", ".join(f"{c['step']}: {c['local']['pointing_game']:.2f} / {c['cam']['pointing_game']:.2f}"
                            for c in curve)
            lines.append(f"- {arm} seed {seed}: {pts}")
    if report.get("interpretation"):
        lines += ["", "## Interpretation", "", report["interpretation"]]
    path.write_text("\n".join(lines) + "\n")

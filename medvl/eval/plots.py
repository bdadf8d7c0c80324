"""Plots and tables of an evaluation: ROC curves, recall@K curves, per-class markdown tables.

matplotlib with the Agg backend (no display needed); every figure is written to a file
and closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvl.atomic import write_text_atomic
from medvl.eval.metrics import valid_label_mask


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path | None:
    """One ROC curve per finding (scikit-learn's ``roc_curve``), with AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6))
    drawn = 0
    for j, name in enumerate(names):
        t, m = valid_label_mask(labels[:, j])
        if len(np.unique(t[m])) < 2:
            continue
        fpr, tpr, _ = roc_curve(t[m], scores[m, j])
        ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(t[m], scores[m, j]):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(-0.01, 1.01),
           ylim=(-0.01, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_recall_curves(retrieval: dict[str, Any], path: Path) -> Path:
    """Recall@K against K for both directions (and their hubness-reduced versions)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("image_to_report", "image->report"), ("report_to_image", "report->image")):
        curve = retrieval[key]["recall_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=label)
        hub = retrieval.get("hubness", {}).get(key)
        if hub:
            ax.plot(range(1, len(hub["recall_curve"]) + 1), hub["recall_curve"], "--",
                    label=f"{label} + {retrieval['hubness']['method']}")
    n = retrieval["n_unique_reports"]
    ks = np.arange(1, len(retrieval["image_to_report"]["recall_curve"]) + 1)
    ax.plot(ks, np.minimum(ks / max(n, 1), 1.0), "k:", lw=0.8, label="chance (image->report)")
    ax.set(xlabel="K", ylabel="recall@K", ylim=(0, 1.02), title="retrieval")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_probe(probe: dict[str, Any], path: Path) -> Path | None:
    """Linear-probe AUROC per finding (and the mean) against the fraction of training labels."""
    fr = probe.get("fractions") or {}
    if not fr:
        return None
    plt = _plt()
    xs = [v["fraction"] * 100 for v in fr.values()]
    names = sorted({n for v in fr.values() for n in v["per_class"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        ys = [v["per_class"].get(n, np.nan) for v in fr.values()]
        ax.plot(xs, [np.nan if y is None else y for y in ys], marker=".", lw=0.8, alpha=0.6, label=n)
    means = [np.nan if v["mean_auroc"] is None else v["mean_auroc"] for v in fr.values()]
    ax.plot(xs, means, "k-o", lw=2, label="mean")
    ax.set(xscale="log", xlabel="% of training labels", ylabel="AUROC", ylim=(0, 1.02), title="linear probe")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_report(results: dict[str, Any]) -> str:
    """Per-class tables and headline figures as markdown."""
    lines = [f"# Evaluation on split `{results.get('split')}` ({results.get('n_studies')} studies)", ""]
    zs = results.get("zeroshot")
    if zs:
        lines += [
            f"## Zero-shot ({zs.get('prompt_set')}; {zs['scoring']} / {zs['ensemble']})", "",
            "| finding | AUROC | 95% CI | positives | negatives |", "|---|---|---|---|---|",
        ]
        for name, r in zs["per_class"].items():
            lines.append(f"| {name} | {_f(r['auroc'])} | {_f(r['ci_low'])}-{_f(r['ci_high'])} | {r['n_pos']} | {r['n_neg']} |")
        ci = zs.get("mean_auroc_ci") or [None, None]
        lines += ["", f"Mean AUROC {_f(zs['mean_auroc'])} (95% CI {_f(ci[0])}-{_f(ci[1])}; uncertain labels: "
                  f"{zs.get('uncertain', 'ignore')}).", "", "| variant | mean AUROC |", "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in zs["variants"].items()]
        mc = zs.get("multiclass") or {}
        if mc.get("n"):
            lines += ["", f"Multi-class ({', '.join(mc['classes'])}; n={mc['n']}): accuracy "
                      f"{_f(mc['accuracy'])} (chance {_f(mc.get('chance', float('nan')))})."]
        lines.append("")
    rt = results.get("retrieval")
    if rt:
        lines += [f"## Retrieval ({rt['n_images']} images, {rt['n_unique_reports']} unique reports)", ""]
        keys = [k for k in rt["image_to_report"] if k.startswith(("R@", "P@"))] + ["mean_rank", "median_rank", "k_occurrence_skewness"]
        lines += ["| direction | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        rows = [(d, rt[d]) for d in ("image_to_report", "report_to_image")]
        if rt.get("hubness"):
            rows += [(f"{d} + {rt['hubness']['method']}", rt["hubness"][d]) for d in ("image_to_report", "report_to_image")]
        for name, r in rows:
            lines.append(f"| {name} | " + " | ".join(_f(r[k]) for k in keys) + " |")
        bc = rt.get("by_class") or {}
        if bc.get("n") and "image_to_report" in bc:
            pk = ", ".join(f"{k} {_f(v)}" for k, v in bc["image_to_report"].items())
            lines += ["", f"By class ({', '.join(bc['classes'])}; {bc['n']} single-label studies, 5x200 style): "
                      f"image->report {pk} (chance P@1 {_f(bc['chance_P@1'])})."]
        lines.append("")
    pr = results.get("probe")
    if pr and pr.get("fractions"):
        fr = pr["fractions"]
        names = sorted({n for v in fr.values() for n in v["per_class"]})
        lines += ["## Linear probe (AUROC)", "", "| finding | " + " | ".join(fr) + " |", "|---" * (len(fr) + 1) + "|"]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(_f(v["per_class"].get(n, float("nan"))) for v in fr.values()) + " |")
        lines.append("| **mean** | " + " | ".join(_f(v["mean_auroc"]) for v in fr.values()) + " |")
        lines.append("")
    gr = results.get("grounding")
    if gr and gr.get("n_cases"):
        lines += ["## Grounding", "", "| finding | cases | pointing game | mask IoU |", "|---|---|---|---|"]
        for n, r in gr["per_class"].items():
            lines.append(f"| {n} | {r['n']} | {_f(r['pointing_game'])} | {_f(r['mask_iou'])} |")
        lines.append(f"| **all** | {gr['n_cases']} | {_f(gr['pointing_game'])} | {_f(gr['mask_iou'])} |")
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.md`` atomically and return its path."""
    path = out_dir / "results.md"
    write_text_atomic(path, markdown_report(results))
    return path

"""Zero-shot classification evaluated on a split.

The scoring rules themselves (``softmax``, ``positive``, prompt ensembles) are pure
functions in :mod:`medvl.inference.zeroshot`, shared with ``medvl.load(...).classify``;
this module scores a whole split with them and measures the result.

Multi-label: per-finding AUROC with bootstrap intervals. Multi-class (CheXpert 5x200
style): images with exactly one positive among a set of classes, accuracy of the
argmax over class scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.eval.metrics import (
    accuracy,
    auroc_per_class,
    bootstrap_auroc,
    bootstrap_mean_auroc,
)
from medvl.inference.zeroshot import ENSEMBLES, prompt_similarity, zeroshot_scores

# Every variant reported next to the headline (the rules that need no model-specific parameter).
SCORINGS = ("softmax", "positive")
# The five CheXpert competition findings used by the CheXpert 5x200 protocol.
CHEXPERT_5 = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion")

__all__ = ["CHEXPERT_5", "ENSEMBLES", "SCORINGS", "balanced_sample", "evaluate_zeroshot",
           "multiclass_subset", "prompt_similarity", "zeroshot_scores"]


def multiclass_subset(labels: np.ndarray, columns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows with exactly one positive among ``columns`` and no uncertain label there.

    Returns:
        ``(rows, targets)``: row indices and the class index (into ``columns``) of each.
    """
    lab = np.asarray(labels, dtype=np.float64)[:, list(columns)]
    pos = np.nan_to_num(lab, nan=0.0) == 1
    unc = np.nan_to_num(lab, nan=0.0) == -1
    keep = (pos.sum(axis=1) == 1) & ~unc.any(axis=1)
    rows = np.flatnonzero(keep)
    return rows, np.argmax(pos[rows], axis=1)


def balanced_sample(targets: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Positions keeping at most ``per_class`` rows of each class (seeded), in original order."""
    if per_class is None:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        keep.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def evaluate_zeroshot(
    image: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    positive: dict[str, np.ndarray],
    negative: dict[str, np.ndarray],
    *,
    logit_scale: float,
    logit_bias: float = 0.0,
    scoring: str = "softmax",
    ensemble: str = "mean",
    n_bootstrap: int = 1000,
    seed: int = 0,
    multiclass: Sequence[str] | None = None,
    multiclass_per_class: int | None = 200,
    uncertain: str = "ignore",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Zero-shot results of one embedding set against prompt embeddings.

    Args:
        image: ``(N, D)`` unit-norm image embeddings.
        labels: ``(N, K)`` labels over ``label_names``.
        label_names: the column names of ``labels`` (``finding_names()``).
        positive, negative: finding -> prompt embeddings; findings absent from
            ``label_names`` are skipped.
        logit_scale: the model's inverse temperature.
        logit_bias: the model's learned bias (``sigmoid`` scoring).
        scoring, ensemble: the headline variant; ``softmax`` and ``positive`` with each
            ensemble are also reported (and the headline's rule, when it is another).
        n_bootstrap: resamples of the AUROC intervals.
        multiclass: classes of the multi-class task (default CheXpert's five, else all).
        multiclass_per_class: at most this many images per class (200 as 5x200).
        uncertain: policy for uncertain (-1) labels: ``ignore``, ``positive`` or ``negative``.
        confidence: level of the bootstrap intervals.

    Returns:
        a JSON-able dict with ``per_class``, ``mean_auroc``, ``variants`` and ``multiclass``.
    """
    names = [f for f in positive if f in label_names]
    cols = [list(label_names).index(f) for f in names]
    lab = np.asarray(labels, dtype=np.float64)[:, cols]
    pos = [positive[f] for f in names]
    neg = [negative[f] for f in names]

    variants: dict[str, float] = {}
    headline: np.ndarray | None = None
    for sc in dict.fromkeys((*SCORINGS, scoring)):
        for ens in ENSEMBLES:
            s = zeroshot_scores(image, pos, neg, scoring=sc, ensemble=ens, logit_scale=logit_scale,
                                logit_bias=logit_bias)
            per = auroc_per_class(lab, s, names, uncertain=uncertain)
            vals = [v for v in per.values() if not np.isnan(v)]
            variants[f"{sc}/{ens}"] = float(np.mean(vals)) if vals else float("nan")
            if sc == scoring and ens == ensemble:
                headline = s
    assert headline is not None
    per_class = bootstrap_auroc(lab, headline, names, n_resamples=n_bootstrap, seed=seed, uncertain=uncertain,
                                confidence=confidence)
    valid = [v["auroc"] for v in per_class.values() if not np.isnan(v["auroc"])]
    mean_ci = bootstrap_mean_auroc(lab, headline, n_resamples=n_bootstrap, seed=seed, uncertain=uncertain,
                                   confidence=confidence)

    mc_names = list(multiclass) if multiclass else [f for f in CHEXPERT_5 if f in names]
    if len(mc_names) < 2:
        mc_names = [f for f in names if f != "no_finding"]
    mc_names = [f for f in mc_names if f in names]
    mc: dict[str, Any] = {"classes": mc_names, "n": 0, "accuracy": float("nan")}
    if len(mc_names) >= 2:
        rows, targets = multiclass_subset(lab, [names.index(f) for f in mc_names])
        keep = balanced_sample(targets, multiclass_per_class, seed)
        rows, targets = rows[keep], targets[keep]
        if len(rows):
            cls_scores = zeroshot_scores(
                image[rows], [positive[f] for f in mc_names], scoring="positive", ensemble=ensemble
            )
            mc.update(
                n=len(rows),
                accuracy=accuracy(targets, cls_scores),
                chance=1.0 / len(mc_names),
                per_class_n={f: int((targets == i).sum()) for i, f in enumerate(mc_names)},
            )
    return {
        "scoring": scoring,
        "ensemble": ensemble,
        "findings": names,
        "per_class": per_class,
        "mean_auroc": float(np.mean(valid)) if valid else float("nan"),
        "mean_auroc_ci": [mean_ci["ci_low"], mean_ci["ci_high"]],
        "uncertain": uncertain,
        "variants": variants,
        "multiclass": mc,
        "n_images": int(image.shape[0]),
        "scores": headline,  # removed before JSON; kept for plots
    }

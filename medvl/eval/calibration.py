"""Calibration measured on an evaluated split: ECE, Brier score and AUROC before and after.

The calibration itself is fitted at the end of training on the val split
(``medvl.inference.calibration``); this module measures it on held-out data (the test
split), per finding and as the mean over findings, for ``results.json`` and the
calibration benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvl.findings import finding_names
from medvl.inference.calibration import brier_score, expected_calibration_error


def _auroc(scores: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < y.size else float("nan")


def calibration_report(pipe: Any, emb: Any, ps: Any, scoring: str, ensemble: str) -> dict[str, Any]:
    """ECE / Brier / AUROC of the rule's scores before and after the model's calibration.

    Uncertain (-1) and unmentioned labels are left out per finding. ``before`` is the
    rule's raw score (ECE and Brier only when it lies in [0, 1]); ``after`` is the
    calibrated probability ``classify`` returns.

    Returns:
        ``{"available", "reason"?, "per_class": {finding: {...}}, "mean": {...}}``.
    """
    cal = pipe.calibration
    if cal is None:
        return {"available": False, "reason": "the model directory has no calibration.json"}
    if not cal.matches(scoring, ensemble, ps.name):
        return {"available": False, "reason": f"calibrated for {cal.scoring}/{cal.ensemble} with prompt set "
                                              f"{cal.prompt_set}, evaluated {scoring}/{ensemble} with {ps.name}"}
    names, logits, scores = pipe.zeroshot(emb.image, ps, scoring=scoring, ensemble=ensemble)
    columns = finding_names()
    per: dict[str, dict[str, float]] = {}
    for j, f in enumerate(names):
        if f not in cal.findings or f not in columns:
            continue
        y = np.asarray(emb.labels[:, columns.index(f)], dtype=np.float64)
        keep = np.isin(y, (0.0, 1.0))
        y = y[keep]
        if not (0 < y.sum() < y.size):
            continue
        before = scores[keep, j]
        after = cal.findings[f].apply(logits[keep, j])
        bounded = float(before.min()) >= 0 and float(before.max()) <= 1
        per[f] = {
            "n": int(y.size), "n_positive": int(y.sum()),
            "ece_before": expected_calibration_error(before, y) if bounded else float("nan"),
            "ece_after": expected_calibration_error(after, y),
            "brier_before": brier_score(before, y) if bounded else float("nan"),
            "brier_after": brier_score(after, y),
            "auroc_before": _auroc(before, y), "auroc_after": _auroc(after, y),
        }
    keys = ("ece_before", "ece_after", "brier_before", "brier_after", "auroc_before", "auroc_after")
    mean = {k: float(np.nanmean([v[k] for v in per.values()])) if per else float("nan") for k in keys}
    return {"available": True, "method": cal.method, "fitted_on": cal.fitted_on, "findings": sorted(per),
            "per_class": per, "mean": mean}

"""Linear probe on frozen image embeddings (the MGCA protocol: 1%, 10%, 100% of labels).

One scikit-learn logistic regression per finding, fit on the training split's frozen
global image embeddings with a seeded fraction of its studies, scored by AUROC on the
evaluation split. Uncertain and unmentioned labels are left out of both fit and score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.eval.metrics import auroc, valid_label_mask


def subsample_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded random subset of ``ceil(fraction * n)`` row indices (at least 1), sorted."""
    m = max(1, min(n, math.ceil(fraction * n)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=m, replace=False))


def linear_probe(
    train_x: np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    label_names: Sequence[str],
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    max_iter: int = 1000,
    C: float = 1.0,
    uncertain: str = "ignore",
) -> dict[str, Any]:
    """Per-finding AUROC of a logistic-regression probe at several label fractions.

    Args:
        train_x: ``(N_train, D)`` frozen image embeddings.
        train_labels: ``(N_train, K)`` labels (1, 0, -1, NaN).
        test_x: ``(N_test, D)``.
        test_labels: ``(N_test, K)``.
        label_names: names of the K columns.
        fractions: fractions of the training studies used.
        seed: seed of the subsampling.
        max_iter, C: logistic regression settings (L2, lbfgs).
        uncertain: policy for uncertain (-1) labels in fit and score (``ignore``,
            ``positive``, ``negative``).

    Returns:
        ``{"<pct>%": {"n_train", "per_class": {finding: auroc}, "mean_auroc", "skipped": {finding: why}}}``.
        A finding is skipped at a fraction whose sample lacks a positive or a negative.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out: dict[str, Any] = {}
    tr_lab = np.asarray(train_labels, dtype=np.float64)
    te_lab = np.asarray(test_labels, dtype=np.float64)
    for frac in fractions:
        rows = subsample_rows(train_x.shape[0], frac, seed)
        per: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for j, name in enumerate(label_names):
            t_tr, m_tr = valid_label_mask(tr_lab[rows, j], uncertain=uncertain)
            t_te, m_te = valid_label_mask(te_lab[:, j], uncertain=uncertain)
            y = t_tr[m_tr]
            if len(np.unique(y)) < 2:
                skipped[name] = "training sample lacks a positive or a negative"
                continue
            if len(np.unique(t_te[m_te])) < 2:
                skipped[name] = "evaluation split lacks a positive or a negative"
                continue
            x = train_x[rows][m_tr]
            # Scaling helps lbfgs converge on embeddings whose coordinates are tiny (unit norm, large D).
            scaler = StandardScaler().fit(x)
            clf = LogisticRegression(C=C, max_iter=max_iter)
            clf.fit(scaler.transform(x), y)
            prob = clf.predict_proba(scaler.transform(test_x))[:, 1]
            per[name] = auroc(te_lab[:, j], prob, uncertain=uncertain)
        vals = [v for v in per.values() if not np.isnan(v)]
        out[f"{frac * 100:g}%"] = {
            "fraction": float(frac),
            "n_train": len(rows),
            "per_class": per,
            "mean_auroc": float(np.mean(vals)) if vals else float("nan"),
            "skipped": skipped,
        }
    return out

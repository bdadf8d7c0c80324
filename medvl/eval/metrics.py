"""Pure metric functions over numpy arrays: AUROC, bootstrap intervals, ranks, recall@K.

Every function here is a function of arrays only (no model, no files), so each can
be checked against an independent reference (scikit-learn, a brute-force loop or a
hand-worked example) in the tests.

Label conventions follow the manifest: ``1`` present, ``0`` absent, ``-1`` uncertain,
``NaN`` not mentioned. AUROC ignores NaN labels always and uncertain labels by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

__all__ = [
    "accuracy",
    "auroc",
    "auroc_per_class",
    "bootstrap_auroc",
    "bootstrap_auroc_samples",
    "bootstrap_mean_auroc",
    "mean_rank",
    "median_rank",
    "precision_at_k",
    "ranks_from_scores",
    "recall_at_k",
    "topk_indices",
    "valid_label_mask",
]


def valid_label_mask(labels: np.ndarray, *, uncertain: str = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """Turn manifest labels into (binary targets, mask of usable entries).

    Args:
        labels: array of 1 / 0 / -1 / NaN, any shape.
        uncertain: ``"ignore"`` drops ``-1`` entries, ``"positive"`` counts them as 1
            and ``"negative"`` as 0 (the U-Ignore / U-Ones / U-Zeros policies of CheXpert).

    Returns:
        ``(targets, mask)``: float targets in {0, 1} and a bool mask of entries to use.
    """
    lab = np.asarray(labels, dtype=np.float64)
    mask = ~np.isnan(lab)
    targets = np.where(mask, lab, 0.0)
    unc = mask & (targets == -1)
    if uncertain == "ignore":
        mask = mask & ~unc
    elif uncertain == "positive":
        targets = np.where(unc, 1.0, targets)
    elif uncertain == "negative":
        targets = np.where(unc, 0.0, targets)
    else:
        raise ValueError(f"uncertain={uncertain!r}; expected 'ignore', 'positive' or 'negative'")
    return (targets > 0).astype(np.float64), mask


def _weighted_auroc(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one class under several sample weightings at once.

    The Mann-Whitney form: the weighted fraction of (positive, negative) pairs where
    the positive scores higher, ties counting one half. Weights are bootstrap counts
    (or ones for the plain estimate), so one sort serves every resample.

    Args:
        targets: ``(n,)`` in {0, 1}.
        scores: ``(n,)``.
        weights: ``(B, n)`` non-negative sample weights.

    Returns:
        ``(B,)`` AUROC per weighting; NaN where a weighting has no positive or no negative.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    t = targets[order]
    w = weights[:, order]  # (B, n)
    neg_w = w * (1.0 - t)
    pos_w = w * t
    cum_neg = np.cumsum(neg_w, axis=1)  # (B, n)
    # Tie groups: every member of a group of equal scores shares start/end positions.
    new_group = np.r_[True, s[1:] != s[:-1]]
    group_id = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(s)]  # exclusive
    start_of = starts[group_id]
    end_of = ends[group_id]
    zero = np.zeros((w.shape[0], 1))
    cum0 = np.concatenate([zero, cum_neg], axis=1)  # cum0[:, i] = neg weight before position i
    neg_below = cum0[:, start_of]
    neg_tied = cum0[:, end_of] - neg_below
    numer = np.sum(pos_w * (neg_below + 0.5 * neg_tied), axis=1)
    denom = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, numer / np.where(denom > 0, denom, 1.0), np.nan)


def auroc(labels: np.ndarray, scores: np.ndarray, *, uncertain: str = "ignore") -> float:
    """Area under the ROC curve of one class, ignoring NaN (and by default uncertain) labels.

    Returns NaN when the usable labels hold only one class (AUROC is undefined there).
    """
    lab = np.asarray(labels, dtype=np.float64).ravel()
    sc = np.asarray(scores, dtype=np.float64).ravel()
    if lab.shape != sc.shape:
        raise ValueError(f"labels {lab.shape} and scores {sc.shape} differ in shape")
    t, m = valid_label_mask(lab, uncertain=uncertain)
    if not m.any():
        return float("nan")
    return float(_weighted_auroc(t[m], sc[m], np.ones((1, int(m.sum()))))[0])


def auroc_per_class(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    uncertain: str = "ignore",
) -> dict[str, float]:
    """AUROC of each column of ``(N, K)`` labels and scores.

    Returns:
        ``{class_name: auroc}``; classes without both a positive and a negative give NaN.
    """
    lab = np.asarray(labels, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if lab.ndim != 2 or lab.shape != sc.shape:
        raise ValueError(f"labels {lab.shape} and scores {sc.shape} must both be (N, K)")
    names = list(class_names) if class_names is not None else [str(i) for i in range(lab.shape[1])]
    if len(names) != lab.shape[1]:
        raise ValueError(f"{len(names)} class names for {lab.shape[1]} columns")
    return {n: auroc(lab[:, j], sc[:, j], uncertain=uncertain) for j, n in enumerate(names)}


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The ``(B, n)`` resample indices used by :func:`bootstrap_auroc` (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n))


def bootstrap_auroc_samples(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    uncertain: str = "ignore",
    chunk: int = 250,
) -> np.ndarray:
    """AUROC of every class on every bootstrap resample, ``(n_resamples, K)``.

    Studies (rows) are resampled with replacement (:func:`bootstrap_indices`), the same
    resamples for every class. Vectorised: a chunk of resamples becomes a matrix of count
    weights, and one sort per class serves the whole chunk. NaN where a resample holds no
    positive or no negative of a class.
    """
    lab = np.asarray(labels, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if lab.ndim == 1:
        lab, sc = lab[:, None], sc[:, None]
    if lab.shape != sc.shape:
        raise ValueError(f"labels {lab.shape} and scores {sc.shape} differ in shape")
    n, k = lab.shape
    idx = bootstrap_indices(n, n_resamples, seed)
    masks = [valid_label_mask(lab[:, j], uncertain=uncertain) for j in range(k)]
    out = np.full((n_resamples, k), np.nan)
    for lo in range(0, n_resamples, chunk):
        block = idx[lo : lo + chunk]
        b = block.shape[0]
        counts = np.bincount((block + np.arange(b)[:, None] * n).ravel(), minlength=b * n)
        counts = counts.reshape(b, n).astype(np.float64)
        for j, (t, m) in enumerate(masks):
            w = counts.copy()
            w[:, ~m] = 0.0
            out[lo : lo + b, j] = _weighted_auroc(t, sc[:, j], w)
    return out


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    if not ok.size:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))


def bootstrap_auroc(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    uncertain: str = "ignore",
    chunk: int = 250,
) -> dict[str, dict[str, float]]:
    """Per-class AUROC with percentile bootstrap confidence intervals.

    Args:
        labels: ``(N, K)`` 1 / 0 / -1 / NaN.
        scores: ``(N, K)``.
        class_names: names of the K columns.
        n_resamples: bootstrap resamples (1000 by default).
        confidence: two-sided level of the interval.
        seed: seed of the resampling.
        uncertain: policy for ``-1`` labels (see :func:`valid_label_mask`).
        chunk: resamples processed at once (bounds memory to ``chunk x N`` floats).

    Returns:
        ``{class: {"auroc", "ci_low", "ci_high", "n_pos", "n_neg", "n_valid_resamples"}}``.
    """
    lab = np.asarray(labels, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if lab.ndim == 1:
        lab, sc = lab[:, None], sc[:, None]
    names = list(class_names) if class_names is not None else [str(i) for i in range(lab.shape[1])]
    boot = bootstrap_auroc_samples(lab, sc, n_resamples=n_resamples, seed=seed, uncertain=uncertain, chunk=chunk)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        t, m = valid_label_mask(lab[:, j], uncertain=uncertain)
        low, high = _interval(boot[:, j], confidence)
        out[name] = {
            "auroc": auroc(lab[:, j], sc[:, j], uncertain=uncertain),
            "ci_low": low,
            "ci_high": high,
            "n_pos": int((t[m] == 1).sum()),
            "n_neg": int((t[m] == 0).sum()),
            "n_valid_resamples": int(np.sum(~np.isnan(boot[:, j]))),
        }
    return out


def bootstrap_mean_auroc(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    uncertain: str = "ignore",
) -> dict[str, float]:
    """Mean AUROC over classes with a bootstrap interval from the same resamples.

    Classes whose AUROC is undefined on the full data are left out; on a resample, the
    mean is over the classes defined there.
    """
    lab = np.asarray(labels, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    point = np.array([auroc(lab[:, j], sc[:, j], uncertain=uncertain) for j in range(lab.shape[1])])
    keep = ~np.isnan(point)
    if not keep.any():
        return {"mean_auroc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    boot = bootstrap_auroc_samples(lab[:, keep], sc[:, keep], n_resamples=n_resamples, seed=seed,
                                   uncertain=uncertain)
    with np.errstate(invalid="ignore"):
        ok_rows = ~np.all(np.isnan(boot), axis=1)
        means = np.full(boot.shape[0], np.nan)
        means[ok_rows] = np.nanmean(boot[ok_rows], axis=1)
    low, high = _interval(means, confidence)
    return {"mean_auroc": float(point[keep].mean()), "ci_low": low, "ci_high": high}


def accuracy(targets: np.ndarray, scores: np.ndarray) -> float:
    """Multi-class accuracy: the fraction of rows whose argmax score is the target class."""
    t = np.asarray(targets).ravel()
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"scores {s.shape} must be (N, C) for {t.shape[0]} targets")
    if t.size == 0:
        return float("nan")
    return float(np.mean(np.argmax(s, axis=1) == t))


def ranks_from_scores(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best-ranked relevant gallery item for each query.

    Ties are broken against the query: a non-relevant item with the same score as the
    best relevant one ranks ahead of it. So a model that scores everything equally gets
    the worst rank, not the best.

    Args:
        scores: ``(Q, G)`` similarity of each query to each gallery item (higher = closer).
        relevant: ``(Q,)`` int index of the one relevant item, or ``(Q, G)`` bool mask.

    Returns:
        ``(Q,)`` int ranks; queries with no relevant item get rank 0 (excluded by the
        summary functions).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (Q, G), got {s.shape}")
    rel = np.asarray(relevant)
    if rel.ndim == 1:
        mask = np.zeros(s.shape, dtype=bool)
        mask[np.arange(s.shape[0]), rel.astype(np.int64)] = True
    else:
        mask = rel.astype(bool)
        if mask.shape != s.shape:
            raise ValueError(f"relevant mask {mask.shape} does not match scores {s.shape}")
    has = mask.any(axis=1)
    best = np.where(mask, s, -np.inf).max(axis=1)  # (Q,)
    ahead = np.sum((~mask) & (s >= best[:, None]), axis=1)
    return np.where(has, ahead + 1, 0).astype(np.int64)


#: Several cut-offs at once (the functions return ``{k: value}`` for these).
Cutoffs = list[int] | tuple[int, ...] | range


@overload
def recall_at_k(ranks: np.ndarray, k: int) -> float: ...
@overload
def recall_at_k(ranks: np.ndarray, k: Cutoffs) -> dict[int, float]: ...
def recall_at_k(ranks: np.ndarray, k: int | Cutoffs) -> float | dict[int, float]:
    """Fraction of queries whose first relevant item is within the top ``k``.

    ``k`` may be a list, giving ``{k: recall}``. Rank-0 queries (no relevant item) are ignored.
    """
    r = np.asarray(ranks)
    r = r[r > 0]
    if isinstance(k, (list, tuple, range)):
        return {int(kk): float(np.mean(r <= kk)) if r.size else float("nan") for kk in k}
    return float(np.mean(r <= k)) if r.size else float("nan")


def mean_rank(ranks: np.ndarray) -> float:
    """Mean 1-based rank (rank-0 queries ignored)."""
    r = np.asarray(ranks)
    r = r[r > 0]
    return float(r.mean()) if r.size else float("nan")


def median_rank(ranks: np.ndarray) -> float:
    """Median 1-based rank (rank-0 queries ignored)."""
    r = np.asarray(ranks)
    r = r[r > 0]
    return float(np.median(r)) if r.size else float("nan")


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first, ``(Q, min(k, G))``.

    Equal scores keep gallery order (stable), so results are reproducible.
    """
    s = np.asarray(scores)
    k = min(int(k), s.shape[1])
    if k <= 0:
        return np.zeros((s.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]), (s.shape[0], 1))
    part_scores = np.take_along_axis(s, part, axis=1)
    # lexsort: primary key descending score, secondary ascending index (stability).
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _agreement(query_labels: np.ndarray, gallery_labels: np.ndarray, mode: str) -> np.ndarray:
    """``(Q, G)`` bool: does each gallery item's label agree with each query's label."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    if q.ndim == 1 and g.ndim == 1:
        return q[:, None] == g[None, :]
    if q.ndim == 2 and g.ndim == 2 and q.shape[1] == g.shape[1]:
        qp = np.nan_to_num(q.astype(np.float64), nan=0.0) == 1
        gp = np.nan_to_num(g.astype(np.float64), nan=0.0) == 1
        if mode == "exact":
            if qp.shape[1] <= 62:
                # The set of positive findings as a bit mask: a (Q, G) comparison, not (Q, G, K).
                w = np.left_shift(np.int64(1), np.arange(qp.shape[1], dtype=np.int64))
                return (qp @ w)[:, None] == (gp @ w)[None, :]
            return np.all(qp[:, None, :] == gp[None, :, :], axis=2)
        if mode == "overlap":
            return (qp.astype(np.int64) @ gp.T.astype(np.int64)) > 0
        raise ValueError(f"mode={mode!r}; expected 'exact' or 'overlap'")
    raise ValueError(f"query labels {q.shape} and gallery labels {g.shape} are not comparable")


@overload
def precision_at_k(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int, *,
                   mode: str = ...) -> float: ...
@overload
def precision_at_k(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: Cutoffs, *,
                   mode: str = ...) -> dict[int, float]: ...
def precision_at_k(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k: int | Cutoffs,
    *,
    mode: str = "exact",
) -> float | dict[int, float]:
    """Precision@K by label agreement (the MIMIC/CheXpert 5x200 retrieval protocol).

    For each query, the fraction of its top-K gallery items whose label agrees with the
    query's, averaged over queries.

    Args:
        scores: ``(Q, G)`` similarities.
        query_labels: ``(Q,)`` class ids, or ``(Q, K)`` multi-label 1/0/-1/NaN.
        gallery_labels: ``(G,)`` or ``(G, K)`` in the same form.
        k: cut-off, or a list of cut-offs.
        mode: for multi-label, ``"exact"`` (same set of positive findings) or
            ``"overlap"`` (at least one positive finding shared).
    """
    s = np.asarray(scores)
    agree = _agreement(query_labels, gallery_labels, mode)
    ks = [int(kk) for kk in k] if isinstance(k, (list, tuple, range)) else [int(k)]
    top = topk_indices(s, max(ks))
    hits = np.take_along_axis(agree, top, axis=1)  # (Q, K_max)
    out = {kk: float(hits[:, : min(kk, hits.shape[1])].mean()) if hits.size else float("nan") for kk in ks}
    return out if isinstance(k, (list, tuple, range)) else out[ks[0]]

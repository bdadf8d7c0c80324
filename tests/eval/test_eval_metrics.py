"""Metrics against independent references: scikit-learn, brute-force loops, hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvl.eval import metrics as M


def test_auroc_matches_sklearn_with_ties_and_ignored_labels() -> None:
    rng = np.random.default_rng(1)
    n = 300
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=n, p=[0.3, 0.5, 0.1, 0.1])
    # Rounded scores create many ties, the case a naive rank formula gets wrong.
    scores = np.round(rng.normal(size=n) + labels * 0.8, 1)
    keep = (labels == 0) | (labels == 1)
    expected = roc_auc_score(labels[keep], np.nan_to_num(scores[keep]))
    assert M.auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_auroc_uncertain_policies_match_sklearn() -> None:
    labels = np.array([1, 0, -1, 1, 0, -1, 0, 1], dtype=float)
    scores = np.array([0.9, 0.1, 0.8, 0.4, 0.5, 0.2, 0.3, 0.7])
    ones = np.where(labels == -1, 1, labels)
    zeros = np.where(labels == -1, 0, labels)
    assert M.auroc(labels, scores, uncertain="positive") == pytest.approx(roc_auc_score(ones, scores))
    assert M.auroc(labels, scores, uncertain="negative") == pytest.approx(roc_auc_score(zeros, scores))


def test_auroc_hand_worked() -> None:
    # pairs (pos, neg): (0.8>0.3) (0.8>0.5) (0.4>0.3) (0.4<0.5) -> 3/4
    assert M.auroc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.3, 0.5])) == pytest.approx(0.75)
    # all tied -> 0.5
    assert M.auroc(np.array([1, 0, 1, 0]), np.zeros(4)) == pytest.approx(0.5)


def test_auroc_single_class_is_nan_not_error() -> None:
    assert np.isnan(M.auroc(np.array([1, 1, np.nan]), np.array([0.2, 0.3, 0.1])))


def test_auroc_per_class_matches_sklearn_columnwise() -> None:
    rng = np.random.default_rng(2)
    labels = rng.choice([1.0, 0.0, np.nan], size=(120, 3), p=[0.4, 0.4, 0.2])
    scores = rng.normal(size=(120, 3))
    res = M.auroc_per_class(labels, scores, ["a", "b", "c"])
    for j, name in enumerate("abc"):
        keep = ~np.isnan(labels[:, j])
        assert res[name] == pytest.approx(roc_auc_score(labels[keep, j], scores[keep, j]))


def test_bootstrap_matches_loop_over_sklearn_resamples() -> None:
    rng = np.random.default_rng(3)
    n = 80
    labels = rng.choice([1.0, 0.0, np.nan], size=(n, 2), p=[0.35, 0.5, 0.15])
    scores = np.round(rng.normal(size=(n, 2)) + np.nan_to_num(labels), 1)
    res = M.bootstrap_auroc(labels, scores, ["x", "y"], n_resamples=60, seed=7, chunk=25)
    idx = M.bootstrap_indices(n, 60, 7)
    for j, name in enumerate("xy"):
        ref = []
        for b in range(60):
            lab, sc = labels[idx[b], j], scores[idx[b], j]
            keep = ~np.isnan(lab)
            if len(np.unique(lab[keep])) == 2:
                ref.append(roc_auc_score(lab[keep], sc[keep]))
        ref = np.array(ref)
        assert res[name]["n_valid_resamples"] == len(ref)
        assert res[name]["ci_low"] == pytest.approx(np.quantile(ref, 0.025))
        assert res[name]["ci_high"] == pytest.approx(np.quantile(ref, 0.975))
        assert res[name]["ci_low"] <= res[name]["auroc"] <= res[name]["ci_high"]


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=(50, 1)).astype(float)
    scores = rng.normal(size=(50, 1))
    a = M.bootstrap_auroc(labels, scores, n_resamples=30, seed=1)
    b = M.bootstrap_auroc(labels, scores, n_resamples=30, seed=1)
    c = M.bootstrap_auroc(labels, scores, n_resamples=30, seed=2)
    assert a == b
    assert a["0"]["ci_low"] != c["0"]["ci_low"] or a["0"]["ci_high"] != c["0"]["ci_high"]


def _brute_force_rank(row: np.ndarray, relevant: set[int]) -> int:
    # Sort by score descending; among equal scores put non-relevant items first (pessimistic).
    order = sorted(range(len(row)), key=lambda g: (-row[g], g in relevant))
    for pos, g in enumerate(order, 1):
        if g in relevant:
            return pos
    return 0


def test_ranks_and_recall_match_brute_force() -> None:
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=(40, 25)), 1)
    gt = rng.integers(0, 25, size=40)
    ranks = M.ranks_from_scores(scores, gt)
    ref = np.array([_brute_force_rank(scores[q], {int(gt[q])}) for q in range(40)])
    np.testing.assert_array_equal(ranks, ref)
    for k in (1, 5, 10):
        assert M.recall_at_k(ranks, k) == pytest.approx(np.mean(ref <= k))
    assert M.mean_rank(ranks) == pytest.approx(ref.mean())
    assert M.median_rank(ranks) == pytest.approx(np.median(ref))


def test_ranks_with_multiple_relevant_items() -> None:
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(10, 12))
    mask = rng.random((10, 12)) < 0.2
    mask[:, 0] |= ~mask.any(axis=1)
    ranks = M.ranks_from_scores(scores, mask)
    ref = [_brute_force_rank(scores[q], set(np.flatnonzero(mask[q]).tolist())) for q in range(10)]
    np.testing.assert_array_equal(ranks, ref)


def test_rank_hand_worked_and_constant_scores_are_worst() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    ranks = M.ranks_from_scores(scores, np.array([2, 0]))
    assert ranks.tolist() == [2, 3]
    assert M.recall_at_k(ranks, [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: 1.0}


def test_precision_at_k_label_agreement_hand_worked() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.9, 0.3]])
    q = np.array([0, 1])
    g = np.array([0, 1, 1, 0])
    # query 0 top-3: g0 (0), g1 (1), g3 (0) -> 2/3 ; query 1 top-3: g2 (1), g3 (0), g1 (1) -> 2/3
    assert M.precision_at_k(scores, q, g, 3) == pytest.approx(2 / 3)
    assert M.precision_at_k(scores, q, g, [1, 2]) == {1: 1.0, 2: 0.5}


def test_precision_at_k_multilabel_modes() -> None:
    scores = np.array([[0.9, 0.5]])
    q = np.array([[1, 0, np.nan]])
    g = np.array([[1, 1, 0], [1, 0, 0]])
    assert M.precision_at_k(scores, q, g, 1, mode="exact") == 0.0
    assert M.precision_at_k(scores, q, g, 1, mode="overlap") == 1.0
    assert M.precision_at_k(scores, q, g, 2, mode="exact") == 0.5


def test_accuracy_matches_hand_count() -> None:
    s = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert M.accuracy(np.array([1, 1, 1]), s) == pytest.approx(2 / 3)


def test_topk_is_sorted_and_stable() -> None:
    s = np.array([[0.2, 0.9, 0.9, 0.1, 0.5]])
    assert M.topk_indices(s, 3).tolist() == [[1, 2, 4]]
    assert M.topk_indices(s, 10).tolist() == [[1, 2, 4, 0, 3]]


def test_bootstrap_mean_auroc_matches_loop() -> None:
    rng = np.random.default_rng(8)
    n = 60
    labels = rng.choice([1.0, 0.0, np.nan], size=(n, 3), p=[0.4, 0.5, 0.1])
    scores = rng.normal(size=(n, 3)) + np.nan_to_num(labels)
    res = M.bootstrap_mean_auroc(labels, scores, n_resamples=40, seed=3)
    idx = M.bootstrap_indices(n, 40, 3)
    means = []
    for b in range(40):
        vals = []
        for j in range(3):
            lab, sc = labels[idx[b], j], scores[idx[b], j]
            keep = ~np.isnan(lab)
            if len(np.unique(lab[keep])) == 2:
                vals.append(roc_auc_score(lab[keep], sc[keep]))
        means.append(np.mean(vals))
    point = np.mean([roc_auc_score(labels[~np.isnan(labels[:, j]), j], scores[~np.isnan(labels[:, j]), j])
                     for j in range(3)])
    assert res["mean_auroc"] == pytest.approx(point)
    assert res["ci_low"] == pytest.approx(np.quantile(means, 0.025))
    assert res["ci_high"] == pytest.approx(np.quantile(means, 0.975))


def test_exact_label_agreement_matches_elementwise_comparison() -> None:
    rng = np.random.default_rng(9)
    q = rng.choice([1.0, 0.0, -1.0, np.nan], size=(30, 9), p=[0.2, 0.5, 0.1, 0.2])
    g = rng.choice([1.0, 0.0, np.nan], size=(40, 9), p=[0.2, 0.6, 0.2])
    q[:5] = g[:5]  # some exact matches
    scores = rng.normal(size=(30, 40))
    top = M.topk_indices(scores, 5)
    qp, gp = np.nan_to_num(q) == 1, np.nan_to_num(g) == 1
    ref = np.mean([[np.array_equal(qp[i], gp[j]) for j in top[i]] for i in range(30)])
    assert M.precision_at_k(scores, q, g, 5) == pytest.approx(ref)

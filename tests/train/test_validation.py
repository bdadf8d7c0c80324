"""Retrieval metrics used for validation, against scikit-learn and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from medvl.train.validation import (
    metric_names,
    recall_at,
    retrieval_metrics,
    retrieval_ranks,
)


def test_recall_matches_sklearn_top_k_accuracy_without_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 40))
    ranks = retrieval_ranks(torch.from_numpy(scores), torch.eye(40, dtype=torch.bool))
    labels = np.arange(40)
    for k in (1, 5, 10):
        assert recall_at(ranks, k) == pytest.approx(top_k_accuracy_score(labels, scores, k=k, labels=labels))


def test_ties_count_against_the_query_and_duplicates_count_as_hits() -> None:
    # a collapsed model (all scores equal) gets the worst rank, not the best
    ranks = retrieval_ranks(torch.zeros(3, 3), torch.eye(3, dtype=torch.bool))
    assert ranks.tolist() == [3, 3, 3]
    # hand-worked: study 0 and 1 have the same report; image 0 is closest to report 1
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    txt = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(img, txt, ["normal", "normal", "effusion"], ks=(1,))
    # image 0 -> report 1 ("normal") is right at rank 1; image 1 -> best is report 2 (wrong),
    # its right answers "normal" rank 2; image 2 -> report 0/1 (cos .78/.71) beat report 2 (.71)
    assert m["i2t_R@1"] == pytest.approx(1 / 3)
    assert m["n"] == 3


def test_perfect_embeddings_give_recall_one() -> None:
    e = torch.eye(6)
    m = retrieval_metrics(e, e * 3, [f"r{i}" for i in range(6)])
    assert m["i2t_R@1"] == m["t2i_R@1"] == m["mean_recall"] == 1.0


def test_metric_names_are_what_retrieval_metrics_returns() -> None:
    e = torch.randn(12, 4)
    assert sorted(retrieval_metrics(e, e, [str(i) for i in range(12)])) == sorted(metric_names())


def test_chunked_scoring_gives_the_same_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    texts = [f"r{i % 20}" for i in range(50)]  # duplicates across chunks
    assert retrieval_metrics(img, txt, texts, chunk=7) == retrieval_metrics(img, txt, texts)

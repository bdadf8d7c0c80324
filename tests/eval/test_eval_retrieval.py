"""Retrieval: duplicate collapsing against a brute-force reference, hubness reduction."""

from __future__ import annotations

import numpy as np
import pytest

from medvl.eval.retrieval import (
    collapse_texts,
    evaluate_retrieval,
    inverted_softmax,
    k_occurrence_skewness,
    querybank_normalize,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_collapse_texts_ignores_case_and_spacing() -> None:
    unique, inv = collapse_texts(["No acute process.", "Effusion.", "no  acute process.", "Effusion."])
    assert unique == ["No acute process.", "Effusion."]
    assert inv.tolist() == [0, 1, 0, 1]


def test_retrieval_with_duplicates_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    texts = ["a", "b", "a", "c", "b", "d", "a"]
    labels = rng.integers(0, 2, size=(7, 3)).astype(float)
    img = _unit(rng.normal(size=(7, 8)))
    txt_by = {t: _unit(rng.normal(size=8)) for t in "abcd"}
    txt = np.stack([txt_by[t] for t in texts])
    res = evaluate_retrieval(img, txt, texts, labels, ks=(1, 2))
    assert res["n_unique_reports"] == 4
    gallery = ["a", "b", "c", "d"]
    # image -> report: rank of the image's own text among the 4 unique texts
    i2t = []
    for i in range(7):
        s = {g: float(img[i] @ txt_by[g]) for g in gallery}
        i2t.append(1 + sum(s[g] >= s[texts[i]] for g in gallery if g != texts[i]))
    # report -> image: best rank of any image carrying that text among 7 images
    t2i = []
    for g in gallery:
        s = img @ txt_by[g]
        best = max(s[j] for j in range(7) if texts[j] == g)
        t2i.append(1 + sum(s[j] >= best for j in range(7) if texts[j] != g))
    assert res["image_to_report"]["R@1"] == pytest.approx(np.mean(np.array(i2t) <= 1))
    assert res["image_to_report"]["R@2"] == pytest.approx(np.mean(np.array(i2t) <= 2))
    assert res["image_to_report"]["mean_rank"] == pytest.approx(np.mean(i2t))
    assert res["report_to_image"]["median_rank"] == pytest.approx(np.median(t2i))
    assert res["report_to_image"]["n_queries"] == 4 and res["report_to_image"]["gallery_size"] == 7
    assert res["image_to_report"]["chance_R@1"] == pytest.approx(1 / 4)


def _hub_scores(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries whose true match is item i, plus a 'hub' item 0 close to every query."""
    rng = np.random.default_rng(seed)
    n, d = 40, 16
    items = _unit(rng.normal(size=(n, d)))
    hub_dir = _unit(rng.normal(size=d))
    items[0] = hub_dir
    queries = _unit(items + 0.9 * rng.normal(size=(n, d)) / np.sqrt(d) + 0.9 * hub_dir)
    bank = _unit(items[rng.integers(1, n, size=200)] + 0.9 * rng.normal(size=(200, d)) / np.sqrt(d) + 0.9 * hub_dir)
    return queries @ items.T, bank @ items.T, items


def test_inverted_softmax_reduces_a_hub() -> None:
    scores, bank, _ = _hub_scores()
    top1 = np.argmax(scores, axis=1)
    assert np.mean(top1 == 0) > 0.3  # the hub wins many queries it does not match
    normed = inverted_softmax(scores, bank, beta=20.0)
    assert np.mean(np.argmax(normed, axis=1) == 0) < np.mean(top1 == 0)
    gt = np.arange(scores.shape[0])
    assert np.mean(np.argmax(normed, axis=1) == gt) > np.mean(top1 == gt)
    assert k_occurrence_skewness(normed, 5) < k_occurrence_skewness(scores, 5)


def test_inverted_softmax_formula_by_hand() -> None:
    s = np.array([[0.5, 0.1]])
    bank = np.array([[0.2, 0.3], [0.4, 0.0]])
    beta = 2.0
    expect = [beta * 0.5 - np.log(np.exp(0.4) + np.exp(0.8)), beta * 0.1 - np.log(np.exp(0.6) + np.exp(0.0))]
    np.testing.assert_allclose(inverted_softmax(s, bank, beta)[0], expect)


def test_querybank_normalisation_leaves_non_hub_queries_alone() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.3, 0.8]])
    bank = np.array([[0.95, 0.0, 0.1], [0.9, 0.2, 0.0]])  # bank's top-1 is always item 0
    out = querybank_normalize(scores, bank, beta=5.0, k=1)
    np.testing.assert_allclose(out[1], 5.0 * scores[1])  # its top-1 (item 2) is not a hub
    np.testing.assert_allclose(out[0], inverted_softmax(scores, bank, 5.0)[0])


def test_evaluate_retrieval_reports_hubness_variant() -> None:
    rng = np.random.default_rng(2)
    img = _unit(rng.normal(size=(12, 8)))
    txt = _unit(img + 0.3 * rng.normal(size=(12, 8)))
    texts = [f"r{i}" for i in range(12)]
    res = evaluate_retrieval(img, txt, texts, np.zeros((12, 2)), hubness="inverted_softmax")
    assert res["hubness"]["bank"].startswith("test queries")
    assert set(res["hubness"]["image_to_report"]) == set(res["image_to_report"])
    with pytest.raises(ValueError):
        evaluate_retrieval(img, txt, texts, np.zeros((12, 2)), hubness="csls")


def test_class_retrieval_precision_by_class_hand_worked() -> None:
    from medvl.eval.retrieval import class_retrieval

    # Two classes; image i matches its own text; texts of class 0 are identical (collapsed).
    img = np.eye(4)
    txt = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    res = class_retrieval(img, txt, ["a", "a", "c", "d"], np.array([0, 0, 1, 1]), ["x", "y"], ks=(1, 2))
    assert res["n_unique_reports"] == 3
    # image 1 has similarity 0 to every text: ties keep gallery order -> top-1 "a" (class 0): agrees.
    assert res["image_to_report"]["P@1"] == 1.0
    # top-2: img0 -> a (0), then c (1) or d... scores 0 tie -> gallery order c: 1/2; img1 same 1/2;
    # img2 -> c, then a: 1/2; img3 -> d, then a: 1/2.
    assert res["image_to_report"]["P@2"] == 0.5
    assert res["chance_P@1"] == 0.5

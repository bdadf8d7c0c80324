"""Image <-> report retrieval: R@K, mean/median rank, precision@K by label agreement.

Duplicate report texts are collapsed before ranking: in real corpora many studies share
a word-for-word normal report, and counting them as distinct gallery items would make
the task depend on which copy ranks first. Image->report ranks the unique texts, with
the image's own text relevant; report->image ranks the images, with every image of that
text relevant.

Hubness reduction (a few gallery items being the nearest neighbour of many queries) is
optional: inverted softmax (Smith et al., 2017) and query-bank normalisation
(QB-Norm's dynamic inverted softmax, Bogolin et al., 2022), each normalising a gallery
item's scores by how strongly a bank of other queries matches it. Both are reported
next to the plain scores, with the hubness (skewness of k-occurrence) before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.eval.metrics import mean_rank, median_rank, precision_at_k, ranks_from_scores, recall_at_k, topk_indices

HUBNESS = ("none", "inverted_softmax", "qb_norm")


def collapse_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Unique texts (first-seen order, whitespace-normalised) and each input's index into them."""
    keys = [" ".join(t.split()).lower() for t in texts]
    first: dict[str, int] = {}
    unique: list[str] = []
    inverse = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        if k not in first:
            first[k] = len(unique)
            unique.append(texts[i])
        inverse[i] = first[k]
    return unique, inverse


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def inverted_softmax(scores: np.ndarray, bank_scores: np.ndarray, beta: float = 20.0) -> np.ndarray:
    """Log inverted-softmax scores: ``beta * s[q, g] - logsumexp_m(beta * bank[m, g])``.

    Args:
        scores: ``(Q, G)`` query-gallery similarities.
        bank_scores: ``(M, G)`` similarities of a bank of other queries to the same gallery.
        beta: inverse temperature.
    """
    return beta * scores - _logsumexp(beta * bank_scores, axis=0)[None, :]


def querybank_normalize(
    scores: np.ndarray, bank_scores: np.ndarray, beta: float = 20.0, k: int = 1
) -> np.ndarray:
    """QB-Norm (dynamic inverted softmax): normalise only queries whose top-1 is a hub.

    The activation set is the gallery items that appear in some bank query's top ``k``;
    a query whose best match is outside it keeps its raw ranking (scaled by ``beta``, which
    does not change its order).
    """
    top = topk_indices(bank_scores, k)
    active = np.zeros(scores.shape[1], dtype=bool)
    active[np.unique(top)] = True
    normed = inverted_softmax(scores, bank_scores, beta)
    use = active[np.argmax(scores, axis=1)]
    return np.where(use[:, None], normed, beta * scores)


def k_occurrence_skewness(scores: np.ndarray, k: int = 10) -> float:
    """Skewness of how often each gallery item is in a query's top ``k`` (0 = no hubs)."""
    top = topk_indices(scores, k)
    counts = np.bincount(top.ravel(), minlength=scores.shape[1]).astype(np.float64)
    sd = counts.std()
    return float(((counts - counts.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def _direction(
    scores: np.ndarray,
    relevant: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int],
    curve_max: int,
) -> dict[str, Any]:
    ranks = ranks_from_scores(scores, relevant)
    out: dict[str, Any] = {f"R@{k}": v for k, v in recall_at_k(ranks, list(ks)).items()}
    out["mean_rank"] = mean_rank(ranks)
    out["median_rank"] = median_rank(ranks)
    prec = precision_at_k(scores, query_labels, gallery_labels, list(ks))
    out.update({f"P@{k}": v for k, v in prec.items()})
    out["n_queries"] = int(scores.shape[0])
    out["gallery_size"] = int(scores.shape[1])
    rel = np.asarray(relevant)
    n_rel = rel.sum(axis=1) if rel.ndim == 2 else np.ones(scores.shape[0])
    # A random ranking puts one of n_rel relevant items first with probability n_rel / G.
    out["chance_R@1"] = float(np.mean(n_rel / scores.shape[1]))
    kmax = min(curve_max, scores.shape[1])
    out["recall_curve"] = [float(v) for v in recall_at_k(ranks, list(range(1, kmax + 1))).values()]
    out["k_occurrence_skewness"] = k_occurrence_skewness(scores, min(10, scores.shape[1]))
    return out


def evaluate_retrieval(
    image: np.ndarray,
    text: np.ndarray,
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    hubness: str = "none",
    hubness_beta: float = 20.0,
    bank_image: np.ndarray | None = None,
    bank_text: np.ndarray | None = None,
    curve_max: int = 50,
) -> dict[str, Any]:
    """Retrieval results in both directions.

    Args:
        image: ``(N, D)`` unit-norm image embeddings.
        text: ``(N, D)`` unit-norm report embeddings, row i the report of image i.
        texts: the report texts (for collapsing duplicates).
        labels: ``(N, K)`` labels, for precision@K by label agreement.
        ks: cut-offs of R@K and P@K.
        hubness: ``"none"``, ``"inverted_softmax"`` or ``"qb_norm"``.
        hubness_beta: inverse temperature of the normalisation.
        bank_image, bank_text: query banks (embeddings of another split, usually train);
            without them the test queries themselves are the bank (transductive, flagged).
        curve_max: longest K of the recall curve written for plots.

    Returns:
        ``{"image_to_report", "report_to_image", "n_images", "n_unique_reports", "hubness"?}``.
    """
    if hubness not in HUBNESS:
        raise ValueError(f"hubness={hubness!r}; expected one of {HUBNESS}")
    unique, inverse = collapse_texts(texts)
    first = np.unique(inverse, return_index=True)[1]  # first study carrying each unique text
    text_u = text[first]  # (U, D): duplicates have identical texts, hence embeddings
    lab = np.asarray(labels, dtype=np.float64)
    lab_u = lab[first]
    i2t = image @ text_u.T  # (N, U)
    t2i = text_u @ image.T  # (U, N)
    rel_t2i = inverse[None, :] == np.arange(len(unique))[:, None]  # (U, N)
    result: dict[str, Any] = {
        "image_to_report": _direction(i2t, inverse, lab, lab_u, ks, curve_max),
        "report_to_image": _direction(t2i, rel_t2i, lab_u, lab, ks, curve_max),
        "n_images": int(image.shape[0]),
        "n_unique_reports": len(unique),
    }
    if hubness != "none":
        transductive = bank_image is None or bank_text is None
        b_img = image if bank_image is None else bank_image
        b_txt = text_u if bank_text is None else bank_text
        fn = inverted_softmax if hubness == "inverted_softmax" else querybank_normalize
        i2t_h = fn(i2t, b_img @ text_u.T, hubness_beta)
        t2i_h = fn(t2i, b_txt @ image.T, hubness_beta)
        result["hubness"] = {
            "method": hubness,
            "beta": hubness_beta,
            "bank": "test queries (transductive)" if transductive else "separate split",
            "image_to_report": _direction(i2t_h, inverse, lab, lab_u, ks, curve_max),
            "report_to_image": _direction(t2i_h, rel_t2i, lab_u, lab, ks, curve_max),
        }
    return result


def class_retrieval(
    image: np.ndarray,
    text: np.ndarray,
    texts: Sequence[str],
    targets: np.ndarray,
    classes: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Precision@K by class on a one-label-per-study subset (the MIMIC/CheXpert 5x200 protocol).

    Args:
        image, text: ``(M, D)`` embeddings of the subset's studies.
        texts: their report texts (duplicates collapsed).
        targets: ``(M,)`` class index of each study.
        classes: class names, for the record.

    Returns:
        ``{"classes", "n", "image_to_report": {"P@K"...}, "report_to_image": {...}}``; a report's
        class is the class of the first study carrying it.
    """
    unique, inverse = collapse_texts(texts)
    first = np.unique(inverse, return_index=True)[1]  # first study carrying each unique text
    t_u, c_u = text[first], np.asarray(targets)[first]
    c = np.asarray(targets)
    i2t = precision_at_k(image @ t_u.T, c, c_u, list(ks))
    t2i = precision_at_k(t_u @ image.T, c_u, c, list(ks))
    return {
        "classes": list(classes),
        "n": len(c),
        "n_unique_reports": len(unique),
        "image_to_report": {f"P@{k}": v for k, v in i2t.items()},
        "report_to_image": {f"P@{k}": v for k, v in t2i.items()},
        "chance_P@1": float(np.mean(np.bincount(c, minlength=len(classes))[c] / len(c))),
    }

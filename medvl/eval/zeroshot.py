"""Zero-shot classification from prompt sets.

Scoring is a pure function of unit-norm embeddings:

* ``softmax`` (CheXzero): for each finding, a two-way softmax between the image's
  similarity to the positive prompts and to the negative prompts, with the model's
  temperature; the probability of "positive" is the score.
* ``positive``: the similarity to the positive prompts alone (no negatives).

A finding's several prompts are combined by ``mean`` (average the prompt embeddings,
renormalise, as CLIP's prompt ensembles) or ``max`` (the best-matching prompt).

Multi-label: per-finding AUROC with bootstrap intervals. Multi-class (CheXpert 5x200
style): images with exactly one positive among a set of classes, accuracy of the
argmax over class scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.eval.metrics import accuracy, auroc_per_class, bootstrap_auroc, bootstrap_mean_auroc

SCORINGS = ("softmax", "positive")
ENSEMBLES = ("mean", "max")
# The five CheXpert competition findings used by the CheXpert 5x200 protocol.
CHEXPERT_5 = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion")


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def prompt_similarity(image: np.ndarray, prompts: np.ndarray, ensemble: str = "mean") -> np.ndarray:
    """Similarity ``(N,)`` of unit-norm images ``(N, D)`` to one finding's prompts ``(P, D)``."""
    if ensemble == "mean":
        return image @ _unit(prompts.mean(axis=0))
    if ensemble == "max":
        return (image @ prompts.T).max(axis=1)
    raise ValueError(f"ensemble={ensemble!r}; expected one of {ENSEMBLES}")


def zeroshot_scores(
    image: np.ndarray,
    positive: Sequence[np.ndarray],
    negative: Sequence[np.ndarray] | None = None,
    *,
    scoring: str = "softmax",
    ensemble: str = "mean",
    logit_scale: float = 100.0,
) -> np.ndarray:
    """Scores ``(N, K)`` of K findings for N images.

    Args:
        image: ``(N, D)`` unit-norm image embeddings.
        positive: per finding, ``(P_k, D)`` unit-norm positive prompt embeddings.
        negative: per finding, ``(M_k, D)`` negative prompt embeddings (``softmax`` only).
        scoring: ``"softmax"`` or ``"positive"``.
        ensemble: ``"mean"`` or ``"max"`` over a finding's prompts.
        logit_scale: inverse temperature of the softmax (``exp(model.logit_scale)``, clamped).
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring!r}; expected one of {SCORINGS}")
    pos = np.stack([prompt_similarity(image, p, ensemble) for p in positive], axis=1)  # (N, K)
    if scoring == "positive":
        return pos
    if negative is None or len(negative) != len(positive):
        raise ValueError("softmax scoring needs negative prompts for every finding")
    neg = np.stack([prompt_similarity(image, n, ensemble) for n in negative], axis=1)
    # softmax over [pos, neg] == sigmoid of the scaled difference; written this way it cannot overflow.
    return 1.0 / (1.0 + np.exp(-logit_scale * (pos - neg)))


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
        scoring, ensemble: the headline variant; every variant is also reported.
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
    for sc in SCORINGS:
        for ens in ENSEMBLES:
            s = zeroshot_scores(image, pos, neg, scoring=sc, ensemble=ens, logit_scale=logit_scale)
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


def classify_image(
    model: Any,
    image: Any,
    *,
    prompts: str = "auto",
    modality: str | None = None,
    scoring: str = "softmax",
    ensemble: str = "mean",
    spatial_dims: int | None = None,
) -> dict[str, float]:
    """Zero-shot finding scores for one image (what the viewer shows next to a study).

    Args:
        model: a ``MedVLModel``.
        image: the model input, ``(C, H, W)`` or ``(C, D, H, W)``; a leading batch of 1 is
            accepted (pass ``spatial_dims=2`` for a ``(1, C, H, W)`` radiograph).
        prompts: ``auto`` (the built-in set for ``modality``, else cxr for 2D and ct for
            3D inputs), a built-in name or a YAML path.
        modality: the study's modality code, used by ``auto``.
        scoring, ensemble: as :func:`zeroshot_scores`.

    Returns:
        ``{finding: score}`` in the prompt set's order; with ``softmax`` scoring each is the
        probability that the finding is present rather than absent.
    """
    from medvl.eval.embed import embed_images, embed_texts
    from medvl.eval.grounding import as_batch
    from medvl.eval.prompts import load_prompt_set, prompt_set_for_modality
    from medvl.eval.runner import model_logit_scale

    x, dims = as_batch(image, spatial_dims)
    if prompts == "auto":
        ps = prompt_set_for_modality(modality) if modality else load_prompt_set("cxr" if dims == 2 else "ct")
    else:
        ps = load_prompt_set(prompts)
    img = embed_images(model, x)
    pos = [embed_texts(model, ps.positive[f]) for f in ps.findings]
    neg = [embed_texts(model, ps.negative[f]) for f in ps.findings]
    s = zeroshot_scores(img, pos, neg, scoring=scoring, ensemble=ensemble, logit_scale=model_logit_scale(model))
    return {f: float(s[0, j]) for j, f in enumerate(ps.findings)}

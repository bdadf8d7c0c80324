"""Zero-shot scoring rules: pure functions of unit-norm embeddings.

A finding's prompts are first combined into one similarity per image (``mean``:
average the prompt embeddings and renormalise, as CLIP's prompt ensembles; ``max``: the
best-matching prompt). A scoring rule then turns the similarities into scores, in two
steps kept apart so calibration can work on the unsquashed values:

* ``logits``: an unbounded value per (image, finding), monotone in the score;
* ``to_score``: the squashing (or identity) applied to it.

Rules (:data:`SCORING_RULES`, a table; importers add their source model's rule):

* ``softmax`` (CheXzero): per finding, a two-way softmax between the image's
  similarity to the positive and to the negative prompts at the model's temperature,
  i.e. ``sigmoid(scale * (pos - neg))``.
* ``positive``: the similarity to the positive prompts alone (no negatives).
* ``classes`` (CLIP, BiomedCLIP, MedCLIP): a softmax over the findings of
  ``scale * similarity`` to each finding's positive prompts: one distribution over the
  classes per image (as CLIP's zero-shot classifier), so the scores sum to 1.
* ``sigmoid`` (SigLIP, MedSigLIP): ``sigmoid(scale * similarity + bias)`` per finding,
  with the model's learned ``logit_bias``: each finding scored on its own, as SigLIP
  was trained (its pairwise sigmoid loss).

None of these is a calibrated probability: ``softmax`` scores sit near 0 or 1 because
the temperature is sharp. ``medvl.inference.calibration`` maps them to probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvl.errors import ConfigError

ENSEMBLES = ("mean", "max")


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written so it cannot overflow."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


@dataclass(frozen=True)
class ScoringRule:
    """One zero-shot scoring rule.

    Attributes:
        logits: ``(positive similarity (N, K), negative similarity (N, K) or None,
            logit_scale, logit_bias) -> (N, K)`` unbounded values, monotone in the score.
        to_score: ``(N, K) logits -> (N, K) scores``.
        needs_negatives: the rule uses the negative prompts.
        bounded: scores lie in [0, 1] (still not calibrated probabilities).
    """

    logits: Callable[[np.ndarray, np.ndarray | None, float, float], np.ndarray]
    to_score: Callable[[np.ndarray], np.ndarray]
    needs_negatives: bool
    bounded: bool


def _softmax_logits(pos: np.ndarray, neg: np.ndarray | None, scale: float, bias: float) -> np.ndarray:
    assert neg is not None
    # a two-way softmax over [pos, neg] is the sigmoid of the scaled difference
    return scale * (pos - neg)


def _classes_logits(pos: np.ndarray, neg: np.ndarray | None, scale: float, bias: float) -> np.ndarray:
    return scale * pos


def _softmax_over_classes(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # shifted: cannot overflow
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid_logits(pos: np.ndarray, neg: np.ndarray | None, scale: float, bias: float) -> np.ndarray:
    return scale * pos + bias


#: scoring rule name -> rule (``classify`` uses the model directory's, see :func:`rule_of`)
SCORING_RULES: dict[str, ScoringRule] = {
    "softmax": ScoringRule(_softmax_logits, sigmoid, needs_negatives=True, bounded=True),
    "positive": ScoringRule(lambda pos, neg, scale, bias: pos, lambda z: z, needs_negatives=False, bounded=False),
    "classes": ScoringRule(_classes_logits, _softmax_over_classes, needs_negatives=False, bounded=True),
    "sigmoid": ScoringRule(_sigmoid_logits, sigmoid, needs_negatives=False, bounded=True),
}


def scoring_rule(name: str) -> ScoringRule:
    """The rule called ``name``; :class:`ConfigError` listing the rules otherwise."""
    rule = SCORING_RULES.get(name)
    if rule is None:
        raise ConfigError(f"unknown scoring rule {name!r}", field="scoring",
                          expected="one of " + ", ".join(SCORING_RULES))
    return rule


def prompt_similarity(image: np.ndarray, prompts: np.ndarray, ensemble: str = "mean") -> np.ndarray:
    """Similarity ``(N,)`` of unit-norm images ``(N, D)`` to one finding's prompts ``(P, D)``."""
    if ensemble == "mean":
        return image @ _unit(prompts.mean(axis=0))
    if ensemble == "max":
        return (image @ prompts.T).max(axis=1)
    raise ValueError(f"ensemble={ensemble!r}; expected one of {ENSEMBLES}")


def zeroshot_logits(
    image: np.ndarray,
    positive: Sequence[np.ndarray],
    negative: Sequence[np.ndarray] | None = None,
    *,
    scoring: str = "softmax",
    ensemble: str = "mean",
    logit_scale: float = 100.0,
    logit_bias: float = 0.0,
) -> np.ndarray:
    """Unsquashed values ``(N, K)`` of K findings for N images (see :func:`zeroshot_scores`)."""
    rule = scoring_rule(scoring)
    pos = np.stack([prompt_similarity(image, p, ensemble) for p in positive], axis=1)  # (N, K)
    neg = None
    if rule.needs_negatives:
        if negative is None or len(negative) != len(positive):
            raise ValueError(f"{scoring} scoring needs negative prompts for every finding")
        neg = np.stack([prompt_similarity(image, n, ensemble) for n in negative], axis=1)
    return np.asarray(rule.logits(pos, neg, float(logit_scale), float(logit_bias)), dtype=np.float64)


def zeroshot_scores(
    image: np.ndarray,
    positive: Sequence[np.ndarray],
    negative: Sequence[np.ndarray] | None = None,
    *,
    scoring: str = "softmax",
    ensemble: str = "mean",
    logit_scale: float = 100.0,
    logit_bias: float = 0.0,
) -> np.ndarray:
    """Scores ``(N, K)`` of K findings for N images.

    Args:
        image: ``(N, D)`` unit-norm image embeddings.
        positive: per finding, ``(P_k, D)`` unit-norm positive prompt embeddings.
        negative: per finding, ``(M_k, D)`` negative prompt embeddings (rules that need them).
        scoring: a rule of :data:`SCORING_RULES` (``"softmax"``, ``"positive"``...).
        ensemble: ``"mean"`` or ``"max"`` over a finding's prompts.
        logit_scale: inverse temperature (``exp(model.logit_scale)``, clamped at 100).
        logit_bias: the model's learned bias (SigLIP-style rules; 0 otherwise).
    """
    logits = zeroshot_logits(image, positive, negative, scoring=scoring, ensemble=ensemble,
                             logit_scale=logit_scale, logit_bias=logit_bias)
    return np.asarray(scoring_rule(scoring).to_score(logits), dtype=np.float64)


def model_logit_scale(model: Any) -> float:
    """``exp(model.logit_scale)``, 100 when the model has none.

    Clamped at 100 (CLIP's cap, the contract), except for models with a learned
    ``logit_bias`` (SigLIP): their scale was learned without that cap (MedSigLIP's is
    above 100) and the bias belongs to the scale as learned.
    """
    ls = getattr(model, "logit_scale", None)
    if ls is None:
        return 100.0
    scale = math.exp(float(ls.detach().cpu().reshape(-1)[0]))
    return float(scale if getattr(model, "logit_bias", None) is not None else min(scale, 100.0))


def model_logit_bias(model: Any) -> float:
    """The model's learned ``logit_bias`` (SigLIP imports), 0 when it has none."""
    lb = getattr(model, "logit_bias", None)
    if lb is None:
        return 0.0
    return float(lb.detach().cpu().reshape(-1)[0]) if hasattr(lb, "detach") else float(lb)


@dataclass(frozen=True)
class ZeroShotRule:
    """How a model directory scores findings (``config.json``'s top-level ``"zeroshot"``).

    Attributes:
        scoring: a rule of :data:`SCORING_RULES`.
        ensemble: ``mean`` or ``max``.
        prompts: a built-in prompt set name, a YAML path, or ``None`` (chosen by the
            training data's modality, else the image's, else by dimensionality).
    """

    scoring: str = "softmax"
    ensemble: str = "mean"
    prompts: str | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> ZeroShotRule:
        """Read the ``"zeroshot"`` entry of a ``config.json`` (absent = the defaults)."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"scoring", "ensemble", "prompts"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}", field=f"config.json:zeroshot.{unknown[0]}",
                              expected="scoring, ensemble, prompts")
        rule = cls(scoring=str(data.get("scoring") or "softmax"), ensemble=str(data.get("ensemble") or "mean"),
                   prompts=data.get("prompts") or None)
        scoring_rule(rule.scoring)
        if rule.ensemble not in ENSEMBLES:
            raise ConfigError(f"unknown ensemble {rule.ensemble!r}", field="config.json:zeroshot.ensemble",
                              expected=" or ".join(ENSEMBLES))
        return rule

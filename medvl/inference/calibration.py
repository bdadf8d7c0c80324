"""Per-finding calibration of zero-shot scores (``calibration.json``).

Zero-shot scores are not probabilities: with a sharp temperature the ``softmax`` rule
gives absent findings scores near 1. At the end of training each finding's score is
calibrated on the validation split with **Platt scaling**: a logistic regression
``p = sigmoid(a * z + b)`` on the rule's unsquashed value ``z`` (``a >= 0``), fitted
with Platt's smoothed targets ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)`` so that a
small validation split does not give 0/1 probabilities.

Why Platt and not the others: temperature scaling alone (``a`` only) cannot remove the
offset that puts absent findings near 1; isotonic regression is a step function that
ties scores (so AUROC can drop) and overfits the few positives a validation split has
per finding. Platt's map is strictly increasing, so the ranking of studies - and the
AUROC on any set - is unchanged (up to ties where ``sigmoid`` rounds to exactly 0 or 1).

A calibration is valid only for the scoring rule, prompt ensemble and prompt set it was
fitted with; ``classify`` says a score is calibrated only then. A finding with fewer
than :data:`MIN_PER_CLASS` positive or negative validation studies stays uncalibrated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medvl.atomic import write_text_atomic
from medvl.errors import CheckpointError

FORMAT = "medvl-calibration"
FORMAT_VERSION = 1
FILE_NAME = "calibration.json"
#: fewest positive and negative validation studies a finding needs to be calibrated
MIN_PER_CLASS = 5
#: smallest Platt slope per standard deviation of the values (keeps the map strictly increasing)
MIN_SLOPE = 1e-4
#: bins of the expected calibration error (equal width, as Guo et al. 2017)
ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Binary ECE: ``sum_b |B_b|/n * |mean(labels in b) - mean(probs in b)|`` over equal-width bins.

    Args:
        probs: ``(n,)`` predicted probabilities of the positive class.
        labels: ``(n,)`` 0/1 outcomes.
        n_bins: bins over [0, 1]; the last bin includes 1.0.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(y[m].mean() - p[m].mean())
    return float(total)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between probabilities and 0/1 outcomes."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from medvl.inference.zeroshot import sigmoid

    return sigmoid(x)


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` minimising the log loss of ``sigmoid(a z + b)`` with smoothed targets.

    ``a`` is bounded below by a small positive :data:`MIN_SLOPE` (per standard deviation
    of ``z``): a finding the validation split says the model ranks backwards gets an
    almost flat map near its prevalence, yet the map stays strictly increasing, so the
    ranking of studies (and AUROC on any set) is kept. The fit is done on standardised
    ``z`` for conditioning and mapped back.
    """
    from scipy.optimize import minimize

    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos, n_neg = float(y.sum()), float((1 - y).sum())
    t = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    mu, sd = float(z.mean()), float(z.std())
    sd = sd if sd > 1e-12 else 1.0
    u = (z - mu) / sd

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        s = a * u + b
        # log(1 + exp(s)) - t * s, with its gradient; logaddexp keeps it finite
        value = float(np.sum(np.logaddexp(0.0, s) - t * s))
        r = _sigmoid(s) - t
        return value, np.array([float(np.sum(r * u)), float(np.sum(r))])

    prior = np.log((n_pos + 1.0) / (n_neg + 1.0))
    res = minimize(loss, x0=np.array([1.0, prior]), jac=True, method="L-BFGS-B",
                   bounds=[(MIN_SLOPE, None), (None, None)])
    a_std, b_std = (float(v) for v in res.x)
    return a_std / sd, b_std - a_std * mu / sd


@dataclass
class FindingCalibration:
    """Platt parameters of one finding and the validation figures they came from.

    Attributes:
        slope, intercept: ``p = sigmoid(slope * z + intercept)``.
        n, n_positive: validation studies used (uncertain and unmentioned labels left out).
        validation: ECE, Brier score and AUROC on the validation split, before and after
            (``after`` is in-sample: the split the map was fitted on).
    """

    slope: float
    intercept: float
    n: int
    n_positive: int
    validation: dict[str, float] = field(default_factory=dict)

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of unsquashed values ``z``."""
        return _sigmoid(self.slope * np.asarray(z, dtype=np.float64) + self.intercept)


@dataclass
class Calibration:
    """Per-finding calibration of one zero-shot rule (``calibration.json``).

    Attributes:
        scoring, ensemble, prompt_set: the rule and prompt set the calibration belongs to.
        findings: finding -> :class:`FindingCalibration`.
        uncalibrated: finding -> why it was not calibrated (too few positives...).
        fitted_on: ``{"split", "n_studies"}`` of the validation data.
        method: ``"platt"``.
    """

    scoring: str
    ensemble: str
    prompt_set: str
    findings: dict[str, FindingCalibration] = field(default_factory=dict)
    uncalibrated: dict[str, str] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    method: str = "platt"

    def matches(self, scoring: str, ensemble: str, prompt_set: str) -> bool:
        """True when this calibration was fitted for exactly this rule and prompt set."""
        return (scoring, ensemble, prompt_set) == (self.scoring, self.ensemble, self.prompt_set)

    # -- the file ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "method": self.method,
                "scoring": self.scoring, "ensemble": self.ensemble, "prompt_set": self.prompt_set,
                "fitted_on": self.fitted_on, "uncalibrated": self.uncalibrated,
                "findings": {k: asdict(v) for k, v in self.findings.items()}}

    def save(self, directory: str | PathLike[str]) -> Path:
        """Write ``calibration.json`` atomically; returns the file."""
        path = Path(directory) / FILE_NAME
        write_text_atomic(path, json.dumps(_finite(self.to_json()), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | PathLike[str]) -> Calibration | None:
        """Read ``calibration.json``; ``None`` when the directory has none (uncalibrated model).

        Raises:
            CheckpointError: the file is unreadable, of another format or a newer version.
        """
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"unreadable calibration file: {exc}", path=path) from None
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CheckpointError("not a medvl calibration file", path=path, field="format", expected=FORMAT)
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"format_version {data.get('format_version')}", path=path,
                                  field="format_version", expected=f"<= {FORMAT_VERSION}")
        try:
            findings = {k: FindingCalibration(**v) for k, v in dict(data.get("findings") or {}).items()}
            return cls(scoring=str(data["scoring"]), ensemble=str(data["ensemble"]),
                       prompt_set=str(data["prompt_set"]), findings=findings,
                       uncalibrated=dict(data.get("uncalibrated") or {}), fitted_on=dict(data.get("fitted_on") or {}),
                       method=str(data.get("method", "platt")))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"invalid calibration file ({exc})", path=path) from None


def _finite(obj: Any) -> Any:
    """NaN -> None so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _auroc(scores: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < y.size else float("nan")


def fit_calibration(
    logits: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    findings: Sequence[str],
    *,
    scoring: str,
    ensemble: str,
    prompt_set: str,
    split: str = "val",
    min_per_class: int = MIN_PER_CLASS,
) -> Calibration:
    """Fit Platt scaling per finding on a validation split.

    Args:
        logits: ``(N, K)`` unsquashed values of the rule (``zeroshot_logits``).
        scores: ``(N, K)`` the rule's uncalibrated scores (for the "before" figures).
        labels: ``(N, K)`` 1 / 0 / -1 (uncertain) / NaN (not mentioned), columns as ``findings``.
        findings: the K finding names.
        scoring, ensemble, prompt_set: the rule and prompt set the values came from.
        split: the split's name, recorded.
        min_per_class: fewest positives and negatives a finding needs.
    """
    lab = np.asarray(labels, dtype=np.float64)
    cal = Calibration(scoring=scoring, ensemble=ensemble, prompt_set=prompt_set,
                      fitted_on={"split": split, "n_studies": int(lab.shape[0])})
    for k, name in enumerate(findings):
        keep = np.isin(lab[:, k], (0.0, 1.0))  # uncertain and unmentioned left out
        y = lab[keep, k]
        n_pos, n_neg = int(y.sum()), int((1 - y).sum())
        if n_pos < min_per_class or n_neg < min_per_class:
            cal.uncalibrated[name] = (f"{n_pos} positive and {n_neg} negative {split} studies "
                                      f"(needs {min_per_class} of each)")
            continue
        z = np.asarray(logits[keep, k], dtype=np.float64)
        before = np.asarray(scores[keep, k], dtype=np.float64)
        slope, intercept = fit_platt(z, y)
        fc = FindingCalibration(slope=slope, intercept=intercept, n=int(y.size), n_positive=n_pos)
        after = fc.apply(z)
        fc.validation = {
            "auroc": _auroc(z, y),
            "ece_before": expected_calibration_error(np.clip(before, 0, 1), y) if _bounded(before) else float("nan"),
            "ece_after": expected_calibration_error(after, y),
            "brier_before": brier_score(before, y) if _bounded(before) else float("nan"),
            "brier_after": brier_score(after, y),
            "prevalence": n_pos / y.size,
        }
        cal.findings[name] = fc
    return cal


def _bounded(scores: np.ndarray) -> bool:
    return bool(scores.size) and float(np.min(scores)) >= 0.0 and float(np.max(scores)) <= 1.0

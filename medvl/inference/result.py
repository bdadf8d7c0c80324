"""What :meth:`medvl.inference.Pipeline.classify` returns (re-exported by ``medvl.inference.pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClassifyResult:
    """Zero-shot finding scores of one image.

    Attributes:
        scores: finding -> score, in the prompt set's order. Calibrated probabilities
            where ``calibrated_findings`` says so; otherwise uncalibrated scores, which
            are **not** probabilities.
        calibrated: True only when every returned score is a calibrated probability.
        ood: the image is outside what the model was trained on (``ood_reason`` says why).
        ood_reason: a plain sentence, "" when in distribution.
        calibrated_findings: the findings whose score is a calibrated probability.
        raw_scores: the rule's uncalibrated scores (equal to ``scores`` when uncalibrated).
        scoring, ensemble, prompt_set: how the scores were made.
        ood_details: every OOD check's outcome.
    """

    scores: dict[str, float]
    calibrated: bool
    ood: bool
    ood_reason: str
    calibrated_findings: list[str] = field(default_factory=list)
    raw_scores: dict[str, float] = field(default_factory=dict)
    scoring: str = "softmax"
    ensemble: str = "mean"
    prompt_set: str = ""
    ood_details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        mixed = bool(self.calibrated_findings) and not self.calibrated
        if self.calibrated:
            kind = "calibrated probabilities"
        elif mixed:
            kind = "calibrated probabilities, except those marked * (uncalibrated scores, not probabilities)"
        else:
            kind = "uncalibrated scores (not probabilities)"
        lines = [f"zero-shot findings, {kind}; research use only, not a diagnosis:"]
        width = max((len(k) for k in self.scores), default=0)
        cal = set(self.calibrated_findings)
        lines += [f"  {k:<{width}}  {v:.3f}" + ("*" if mixed and k not in cal else "") for k, v in self.scores.items()]
        lines.append(f"out of distribution: {self.ood_reason}" if self.ood else "in distribution: no check failed")
        return "\n".join(lines)

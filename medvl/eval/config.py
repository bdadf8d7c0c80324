"""The ``eval`` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medvl.errors import ConfigError

TASKS = ("zeroshot", "retrieval", "grounding", "probe")


@dataclass
class EvalConfig:
    """Settings of :func:`medvl.eval.evaluate`.

    Attributes:
        tasks: which of ``zeroshot``, ``retrieval``, ``grounding``, ``probe`` to run.
        prompts: ``auto`` (built-in set for the split's modality), ``cxr``, ``ct`` or a YAML path.
        scoring: headline zero-shot scoring: ``auto`` (the model directory's own rule,
            ``config.json``'s ``zeroshot``; ``softmax`` when it has none), ``softmax``
            (positive vs negative prompts, as CheXzero), ``positive`` (positive prompts
            only), ``classes`` (softmax over the findings, CLIP's) or ``sigmoid`` (with
            the model's logit_bias, SigLIP's). softmax and positive are also reported.
        ensemble: how a finding's prompts combine: ``auto`` (the model's rule; ``mean``
            when it has none), ``mean`` or ``max``.
        n_bootstrap: bootstrap resamples of AUROC confidence intervals.
        confidence: two-sided level of those intervals.
        uncertain: how uncertain (-1) labels count in AUROC and the probe: ``ignore``
            (left out, CheXpert's U-Ignore), ``positive`` (U-Ones) or ``negative`` (U-Zeros).
        seed: seed of bootstrap, class balancing and probe subsampling.
        multiclass: classes of the multi-class zero-shot task (default: CheXpert's five
            when present, else every finding but ``no_finding``).
        multiclass_per_class: images kept per class (200 as in CheXpert 5x200); null keeps all.
        retrieval_ks: cut-offs of R@K and P@K.
        hubness: hubness reduction reported next to the plain ranking: ``none``,
            ``inverted_softmax`` or ``qb_norm``.
        hubness_beta: inverse temperature of the hubness normalisation.
        hubness_bank_size: train studies (first in manifest order) embedded as the hubness
            query bank when the probe does not embed the whole train split anyway.
        probe_fractions: fractions of the training labels the linear probe is fit on.
        probe_max_iter: iterations of the logistic regression.
        grounding_threshold: a heatmap pixel belongs to the predicted region when it is
            above this fraction of the heatmap's range (for mask IoU).
        plots: write PNG plots next to ``results.json``.
        progress: show progress bars.
    """

    tasks: list[str] = field(default_factory=lambda: ["zeroshot", "retrieval"])
    prompts: str = "auto"
    scoring: Literal["auto", "softmax", "positive", "classes", "sigmoid"] = "auto"
    ensemble: Literal["auto", "mean", "max"] = "auto"
    n_bootstrap: int = 1000
    confidence: float = 0.95
    uncertain: Literal["ignore", "positive", "negative"] = "ignore"
    seed: int = 0
    multiclass: list[str] | None = None
    multiclass_per_class: int | None = 200
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    hubness: Literal["none", "inverted_softmax", "qb_norm"] = "qb_norm"
    hubness_beta: float = 20.0
    hubness_bank_size: int = 1000
    probe_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    probe_max_iter: int = 1000
    grounding_threshold: float = 0.5
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        """Reject unknown tasks and out-of-range numbers with a :class:`ConfigError`."""
        for t in self.tasks:
            if t not in TASKS:
                raise ConfigError(f"unknown task {t!r}", field="eval.tasks", expected="one of " + ", ".join(TASKS))
        if self.n_bootstrap < 0:
            raise ConfigError("must be >= 0", field="eval.n_bootstrap")
        if not 0 < self.confidence < 1:
            raise ConfigError("must be between 0 and 1", field="eval.confidence")
        for f in self.probe_fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"fraction {f} out of range", field="eval.probe_fractions", expected="0 < f <= 1")
        if self.hubness_bank_size < 1:
            raise ConfigError("must be >= 1", field="eval.hubness_bank_size")
        if any(k < 1 for k in self.retrieval_ks):
            raise ConfigError("cut-offs must be >= 1", field="eval.retrieval_ks")
        if not 0 <= self.grounding_threshold <= 1:
            raise ConfigError("must be between 0 and 1", field="eval.grounding_threshold")

"""The text side of an item: a study's report sections -> the prepared model text.

Report parsing (sections, sentence splitting, the abbreviation table) belongs to
:mod:`medvl.data.reports`; this module only applies the data section's choices
(``sections``, ``max_words``, ``text_mode``, ``expand_abbreviations``) through it.
"""

from __future__ import annotations

import re

import numpy as np

from medvl.data.config import DataConfig

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _reports_module():  # noqa: ANN202
    try:
        from medvl.data import reports
    except ImportError:  # the reports room has not landed: plain fallback below
        return None
    return reports if hasattr(reports, "prepare_report") else None


def prepare_text(report: dict[str, str], cfg: DataConfig, rng: np.random.Generator) -> str:
    """Prepared text of one report for the model.

    Args:
        report: section name -> text (manifest ``report``).
        cfg: the data section.
        rng: random generator for ``text_mode: sample_sentences`` (seeded per epoch
            and item by the dataset, so draws are reproducible).

    Returns:
        The text; empty when none of the chosen sections has text.
    """
    reports = _reports_module()
    if reports is not None:
        return reports.prepare_report(
            report, sections=list(cfg.sections), max_words=cfg.max_words, mode=cfg.text_mode,
            expand_abbreviations=cfg.expand_abbreviations, rng=rng,
        )
    return _fallback_prepare(report, cfg, rng)


def _fallback_prepare(report: dict[str, str], cfg: DataConfig, rng: np.random.Generator) -> str:
    parts = [report[s].strip() for s in cfg.sections if (report.get(s) or "").strip()]
    text = " ".join(parts)
    if cfg.text_mode == "sample_sentences":
        sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
        order = rng.permutation(len(sentences))
        chosen, n_words = [], 0
        for i in order:
            words = len(sentences[i].split())
            if chosen and n_words + words > cfg.max_words:
                continue
            chosen.append(int(i))
            n_words += words
        text = " ".join(sentences[i] for i in sorted(chosen))
    words = text.split()
    return " ".join(words[: cfg.max_words])

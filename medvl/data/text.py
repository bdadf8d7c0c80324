"""The text side of an item: a study's report sections -> the prepared model text.

Report parsing (sections, sentence splitting, the abbreviation table) belongs to
:mod:`medvl.data.reports`; this adapter only applies the data section's choices
(``sections``, ``max_words``, ``text_mode``, ``expand_abbreviations``, ``lowercase``).
"""

from __future__ import annotations

import numpy as np

from medvl.data.config import DataConfig
from medvl.data.reports import prepare_report


def prepare_text(report: dict[str, str], cfg: DataConfig, rng: np.random.Generator,
                 *, sample: bool = True) -> str:
    """Prepared text of one report for the model.

    Args:
        report: section name -> text (manifest ``report``).
        cfg: the data section.
        rng: random generator for ``text_mode: sample_sentences`` (seeded per epoch
            and item by the dataset, so draws are reproducible and resumable).
        sample: allow ``sample_sentences``; the dataset passes ``False`` outside the
            train split so evaluation texts are fixed (``truncate``).

    Raises:
        ReportError: none of the chosen sections has text (the dataset skips the study).
    """
    text = prepare_report(
        report, sections_to_use=list(cfg.sections), max_words=cfg.max_words,
        mode=cfg.text_mode if sample else "truncate",
        rng=rng, expand=cfg.expand_abbreviations,
    )
    return text.lower() if cfg.lowercase else text


def prepare_query(text: str, cfg: DataConfig) -> str:
    """A free-text query or prompt prepared as report text is: the same abbreviation
    expansion, word budget (``truncate``) and case as training used.

    Raises:
        ReportError: the text is empty.
    """
    out = prepare_report({"query": text}, sections_to_use=["query"], max_words=cfg.max_words,
                         mode="truncate", expand=cfg.expand_abbreviations)
    return out.lower() if cfg.lowercase else out

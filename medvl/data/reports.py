"""Report text preparation: sections, sentences, abbreviations, length control.

Radiology reports arrive as free text with headings (MIMIC-CXR style)::

    EXAMINATION: CHEST (PA AND LAT)
    INDICATION: ___ with cough.
    FINDINGS:  Small right pleural effusion. No PTX.
    IMPRESSION: Small right effusion.

:func:`extract_sections` finds the headings (case-insensitive, at a line start or
after a sentence end), keeps FINDINGS and IMPRESSION and drops the others
(INDICATION, COMPARISON, TECHNIQUE, ...) unless asked. :func:`split_sentences`
splits without breaking on decimals ("1.5 cm"), titles ("Dr.") or list numbers.
:func:`expand_abbreviations` uses the table in ``medvl/resources/abbreviations.yaml``.
:func:`prepare_report` turns a report's sections into the text a text encoder sees.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
import yaml

from medvl.errors import ReportError

#: Heading (as written, upper case) -> canonical section key.
SECTION_ALIASES: dict[str, str] = {
    "FINDINGS": "findings", "FINDING": "findings", "FINDINGS AND IMPRESSION": "findings",
    "FINDINGS/IMPRESSION": "findings", "FINDINGS / IMPRESSION": "findings", "REPORT": "findings", "BODY": "findings",
    "IMPRESSION": "impression", "IMPRESSIONS": "impression", "CONCLUSION": "impression",
    "CONCLUSIONS": "impression", "SUMMARY": "impression", "OPINION": "impression",
    "INDICATION": "indication", "INDICATIONS": "indication", "HISTORY": "indication",
    "CLINICAL HISTORY": "indication", "CLINICAL INDICATION": "indication",
    "CLINICAL INFORMATION": "indication", "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication", "REASON FOR STUDY": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison", "PRIOR": "comparison",
    "TECHNIQUE": "technique", "PROCEDURE": "technique", "EXAMINATION": "examination",
    "EXAM": "examination", "STUDY": "examination", "TYPE OF EXAMINATION": "examination",
    "RECOMMENDATION": "recommendation", "RECOMMENDATIONS": "recommendation",
    "NOTIFICATION": "notification", "WET READ": "wet_read", "ADDENDUM": "addendum",
}
#: Sections a report is usually reduced to.
MAIN_SECTIONS = ("findings", "impression")

_HEADING_RE = re.compile(
    r"(?:(?<=^)|(?<=\n)|(?<=[.!?;]\s)|(?<=[.!?;]))[ \t]*("
    # Words of a heading may be separated by any white space ("CLINICAL  HISTORY").
    + "|".join(sorted((r"\s+".join(map(re.escape, h.split())) for h in SECTION_ALIASES), key=len, reverse=True))
    # A colon ends a heading; a heading alone on its line needs none ("FINDINGS\n...").
    + r")(?:[ \t]*:|[ \t]*(?=\n|$))",
    re.IGNORECASE,
)
# "FINAL REPORT" is a banner, not a section; drop it wherever it stands.
_BANNER_RE = re.compile(r"^\s*FINAL REPORT\s*$", re.IGNORECASE | re.MULTILINE)

# Tokens ending in "." that do not end a sentence.
_NO_BREAK = {
    "dr", "mr", "mrs", "ms", "prof", "st", "vs", "e.g", "i.e", "approx", "fig", "figs", "cf", "no",
    "nos", "ca", "al", "incl", "resp", "sr", "jr",
}


def _normalise_space(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def extract_sections(text: str, *, keep_other: bool = False) -> dict[str, str]:
    """Split report free text into sections by heading.

    Args:
        text: the whole report.
        keep_other: keep sections other than findings and impression (under their
            canonical key, e.g. ``indication``, ``comparison``), and text before the
            first heading under ``preamble``.

    Returns:
        Mapping of canonical section key to its text with whitespace collapsed.
        Repeated headings are joined. A report with no recognised heading returns
        ``{}`` (or ``{"preamble": text}`` with ``keep_other``).
    """
    if not isinstance(text, str):
        raise ReportError(f"report text is {type(text).__name__}, not a string", field="report", expected="str")
    text = _BANNER_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    out: dict[str, str] = {}

    def add(key: str, body: str) -> None:
        body = _normalise_space(body)
        if not body:
            return
        if key not in MAIN_SECTIONS and not keep_other:
            return
        out[key] = f"{out[key]} {body}" if key in out else body

    # Without a colon only an upper-case heading counts: a wrapped line may hold just "findings".
    matches = [m for m in _HEADING_RE.finditer(text) if m.group(0).rstrip().endswith(":") or m.group(1).isupper()]
    add("preamble", text[: matches[0].start()] if matches else text)
    for m, nxt in zip(matches, [*matches[1:], None] if matches else [], strict=True):
        heading = _normalise_space(m.group(1)).upper()
        body = text[m.end(): nxt.start() if nxt else len(text)]
        add(SECTION_ALIASES[heading], body)
    return out


def split_sentences(text: str) -> list[str]:
    """Split text into sentences.

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space and an upper-case
    letter, a digit or an opening bracket/quote, unless the word before the period is
    a title or abbreviation (``Dr.``, ``e.g.``, ``approx.``), a single initial, or a
    list number at a sentence start (``1.``). Decimals ("1.5 cm") never split because
    no space follows their period. Line breaks between list items also split.
    """
    text = text.strip()
    if not text:
        return []
    pieces: list[str] = []
    start = 0
    for m in re.finditer(r"[.!?]+(?=\s+[A-Z0-9(\"'\[])|\n\s*(?=(?:\d+[.)]|[-*\u2022])\s)", text):
        end = m.end()
        chunk = text[start:end]
        if m.group().startswith((".", "!", "?")):
            before = text[start:m.start()]
            word = before.split()[-1].lower() if before.split() else ""
            word = word.lstrip("([\"'")
            if m.group() == "." and (
                word in _NO_BREAK
                or (len(word) == 1 and word.isalpha())
                or (word.isdigit() and len(before.split()) == 1)
            ):
                continue
        s = _normalise_space(chunk)
        if s:
            pieces.append(s)
        start = end
    rest = _normalise_space(text[start:])
    if rest:
        pieces.append(rest)
    return pieces


@lru_cache(maxsize=1)
def abbreviation_table() -> tuple[tuple[str, str, bool], ...]:
    """``(abbreviation, expansion, case_sensitive)`` from ``abbreviations.yaml``, longest first."""
    raw = resources.files("medvl.resources").joinpath("abbreviations.yaml").read_text("utf-8")
    data = yaml.safe_load(raw)
    rows = [(k, v, True) for k, v in (data.get("case_sensitive") or {}).items()]
    rows += [(k, v, False) for k, v in (data.get("case_insensitive") or {}).items()]
    return tuple(sorted(rows, key=lambda r: -len(r[0])))


@lru_cache(maxsize=1)
def _abbreviation_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    pats = []
    for abbr, expansion, case_sensitive in abbreviation_table():
        # Whole tokens only: no letter, digit or slash glued on either side.
        tail = r"(?![\w/])" if abbr[-1].isalnum() else r"(?![\w/.])"
        pat = re.compile(r"(?<![\w/])" + re.escape(abbr) + tail, 0 if case_sensitive else re.IGNORECASE)
        pats.append((pat, expansion))
    return tuple(pats)


def expand_abbreviations(text: str) -> str:
    """Replace known abbreviations by their expansion (``"b/l PTX"`` -> ``"bilateral pneumothorax"``).

    A replaced token at the start of a sentence keeps its capital (``"B/l"`` -> ``"Bilateral"``).
    """

    def sub(expansion: str) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            s = m.group()
            start = m.start()
            prefix = m.string[:start].rstrip()
            sentence_start = not prefix or prefix[-1] in ".!?:\n"
            if sentence_start and s[0].isupper():
                return expansion[0].upper() + expansion[1:]
            return expansion

        return repl

    for pat, expansion in _abbreviation_patterns():
        text = pat.sub(sub(expansion), text)
    return text


def _words(text: str) -> int:
    return len(text.split())


def _truncate_words(sentence: str, budget: int, length: Callable[[str], int]) -> str:
    words = sentence.split()
    lo, hi = 1, len(words)  # never empty: one word over budget beats no text at all
    while lo < hi:  # longest word prefix within budget (length is monotone in words)
        mid = (lo + hi + 1) // 2
        if length(" ".join(words[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def prepare_report(
    sections: Mapping[str, str],
    *,
    sections_to_use: Sequence[str] = MAIN_SECTIONS,
    max_words: int | None = None,
    length_fn: Callable[[str], int] | None = None,
    mode: Literal["truncate", "sample_sentences"] = "truncate",
    rng: np.random.Generator | random.Random | None = None,
    expand: bool = True,
) -> str:
    """Turn a report's sections into the text a text encoder sees.

    Args:
        sections: section key -> text (a manifest row's ``report``).
        sections_to_use: sections to join, in this order; missing or empty ones are skipped.
        max_words: length budget, or None for no limit. Counted in words, or in the
            units of ``length_fn`` when given (e.g. ``lambda s: len(tok(s).input_ids)``).
        length_fn: text -> length; default counts white-space separated words.
        mode: what to do when the text exceeds the budget: ``truncate`` keeps leading
            whole sentences (cutting words only when the first sentence alone is too
            long, and keeping at least one word); ``sample_sentences`` keeps a random subset of sentences that fits,
            in their original order (augmentation in training).
        rng: random source for ``sample_sentences`` (numpy Generator or
            ``random.Random``); None uses a fixed seed so results are reproducible.
        expand: expand abbreviations (``PTX`` -> ``pneumothorax``).

    Returns:
        The prepared text.

    Raises:
        ReportError: every requested section is missing or empty; an invalid mode or budget.
    """
    if not isinstance(sections, Mapping):
        raise ReportError(f"report is {type(sections).__name__}, not a mapping of sections", field="report",
                          expected="{'findings': ..., 'impression': ...}")
    if mode not in ("truncate", "sample_sentences"):
        raise ReportError(f"unknown mode {mode!r}", field="mode", expected="'truncate' or 'sample_sentences'")
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1):
        raise ReportError(f"invalid length budget {max_words!r}", field="max_words", expected="an integer >= 1 or None")
    texts = [_normalise_space(str(sections.get(k) or "")) for k in sections_to_use]
    texts = [t for t in texts if t]
    if not texts:
        raise ReportError(
            "report is empty: no text in " + ", ".join(sections_to_use), field="report",
            expected="at least one non-empty section among " + ", ".join(sections_to_use),
        )
    text = " ".join(texts)
    if expand:
        text = expand_abbreviations(text)
    length = length_fn or _words
    if max_words is None or length(text) <= max_words:
        return text
    sentences = [s for t in texts for s in split_sentences(expand_abbreviations(t) if expand else t)]
    if mode == "truncate":
        kept: list[str] = []
        for s in sentences:
            if length(" ".join([*kept, s])) > max_words:
                break
            kept.append(s)
        return " ".join(kept) if kept else _truncate_words(sentences[0], max_words, length)
    if rng is None:
        rng = np.random.default_rng(0)
    order = list(range(len(sentences)))
    if isinstance(rng, random.Random):
        rng.shuffle(order)
    else:
        order = [int(i) for i in rng.permutation(len(sentences))]
    chosen: list[int] = []
    for i in order:
        trial = sorted([*chosen, i])
        if length(" ".join(sentences[j] for j in trial)) <= max_words:
            chosen = trial
    if not chosen:
        return _truncate_words(sentences[order[0]], max_words, length)
    return " ".join(sentences[j] for j in chosen)

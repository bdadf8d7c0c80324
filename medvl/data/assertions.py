"""What a report sentence or a query asserts: which finding, present or denied, on which side.

A radiologist reading "There is no pneumothorax." next to a search for "left apical
pneumothorax" sees a contradiction, not a match; an embedding similarity does not.
This module reads the statements out of text with explicit rules, so a highlighter or
a search can respect negation, hedging and laterality:

* finding mentions come from term lists per finding (``medvl/resources/assertion_terms.yaml``,
  data not code), keyed like the label vocabulary (``medvl.findings``);
* a mention is ``absent`` when a negation trigger precedes it in its clause (or a
  post-trigger such as "has resolved" follows it), ``uncertain`` when a hedge stands in
  its clause, else ``present`` (NegEx-style rules, Chapman et al. 2001: a trigger's scope
  ends at a clause break such as "but" or ";"; pseudo-triggers such as "no change" do
  not negate);
* a located finding (``Finding.located``) takes the side word nearest to the mention in
  its clause ("left", "RLL", "bilateral"...).

:func:`find_assertions` reads one sentence or query, :func:`report_statements` a whole
report by section and sentence, :func:`supports` says whether a sentence's statements
back a query's, and :func:`report_agreement` whether a report agrees with a query,
contradicts it or does not mention it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml

from medvl.data.reports import MAIN_SECTIONS, extract_sections, split_sentences

Status = Literal["present", "absent", "uncertain"]
Laterality = Literal["left", "right", "bilateral"]


@dataclass(frozen=True)
class Assertion:
    """One statement about one finding.

    Attributes:
        finding: label key (``pleural_effusion``).
        status: ``present``, ``absent`` (denied) or ``uncertain`` (hedged).
        laterality: ``left``, ``right``, ``bilateral`` or ``None`` (not stated, or a
            finding without a side).
    """

    finding: str
    status: Status
    laterality: Laterality | None = None


@dataclass(frozen=True)
class ReportSentence:
    """A sentence of a report with its section and what it asserts.

    Attributes:
        section: canonical section key (``findings``, ``impression``, ``indication``...).
        text: the sentence.
        assertions: its statements (empty for a sentence naming no finding).
    """

    section: str
    text: str
    assertions: tuple[Assertion, ...]

    @property
    def main(self) -> bool:
        """Whether the sentence is in FINDINGS or IMPRESSION (the sections that state results)."""
        return self.section in MAIN_SECTIONS


class Agreement(str, Enum):
    """How a report relates to a query's statements."""

    AGREES = "agrees"  # every statement of the query is backed by a sentence
    CONTRADICTS = "contradicts"  # a statement is denied, hedged, or stated on another side only
    SILENT = "silent"  # the report does not mention the query's findings


@dataclass(frozen=True)
class _Terms:
    findings: dict[str, re.Pattern[str]]
    absent: dict[str, re.Pattern[str]]
    negation: re.Pattern[str]
    post_negation: re.Pattern[str]
    pseudo: re.Pattern[str]
    hedge: re.Pattern[str]
    clause_break: re.Pattern[str]
    sides: dict[str, re.Pattern[str]]
    located: frozenset[str]


def _words(patterns: Sequence[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of ``patterns`` as whole words."""
    return re.compile(r"(?<![\w/-])(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?![\w/-])", re.IGNORECASE)


@lru_cache(maxsize=1)
def _terms() -> _Terms:
    from medvl.findings import load_findings

    raw = yaml.safe_load(resources.files("medvl.resources").joinpath("assertion_terms.yaml").read_text("utf-8"))
    # ";" ends a clause wherever it stands; the other breaks are words.
    break_words = [b for b in raw["clause_breaks"] if b != ";"]
    return _Terms(
        findings={k: _words(v) for k, v in raw["findings"].items()},
        absent={k: _words(v) for k, v in raw["absent_phrases"].items()},
        negation=_words(raw["negation_triggers"]),
        post_negation=_words(raw["post_negation_triggers"]),
        pseudo=_words(raw["pseudo_negations"]),
        hedge=_words(raw["hedges"]),
        clause_break=re.compile(";|" + _words(break_words).pattern, re.IGNORECASE),
        sides={k: _words(v) for k, v in raw["laterality"].items()},
        located=frozenset(f.name for f in load_findings() if f.located),
    )


def _clauses(text: str) -> list[str]:
    """The clauses of a sentence: a negation or hedge does not reach past a clause break."""
    return [c for c in _terms().clause_break.split(text) if c and c.strip()]


#: A side word after one of these modifies the mention before it ("effusion on the right").
_POSTMODIFIER = re.compile(r"(?:\b(?:on|in|at|of|involving|within|to|over)\s+(?:the\s+)?)$", re.IGNORECASE)


def _side(clause: str, spans: list[tuple[int, int]], i: int) -> Laterality | None:
    """The side of mention ``i`` among the clause's finding mentions ``spans`` (text order).

    A side word inside the mention counts first ("fluid in the left pleural space"); then
    one after it introduced by a preposition ("consolidation in the left upper lobe"),
    up to the next mention; then the nearest one before it and after the previous
    mention ("right effusion and left PTX"); else the nearest side word in the clause.
    """
    start, end = spans[i]
    prev_end = spans[i - 1][1] if i > 0 else 0
    next_start = spans[i + 1][0] if i + 1 < len(spans) else len(clause)
    words = sorted(
        (m.start(), m.end(), side) for side, pattern in _terms().sides.items() for m in pattern.finditer(clause)
    )
    if not words:
        return None
    inside = [w for w in words if w[0] >= start and w[1] <= end]
    after = [w for w in words if end <= w[0] < next_start and _POSTMODIFIER.search(clause[end:w[0]])]
    before = [w for w in words if prev_end <= w[0] and w[1] <= start and not _POSTMODIFIER.search(clause[:w[0]])]
    for group, pick in ((inside, 0), (after, 0), (before, -1)):
        if group:
            return group[pick][2]  # type: ignore[return-value]
    nearest = min(words, key=lambda w: min(abs(w[0] - end), abs(start - w[1])))
    return nearest[2]  # type: ignore[return-value]


def _negated(clause: str, start: int, end: int) -> bool:
    t = _terms()
    pseudo = [m.span() for m in t.pseudo.finditer(clause)]
    for m in t.negation.finditer(clause[:start]):
        if not any(a <= m.start() < b for a, b in pseudo):
            return True
    return bool(t.post_negation.search(clause[end:]))


def find_assertions(text: str) -> list[Assertion]:
    """The statements of one sentence or query, one per finding and clause, in text order.

    Args:
        text: a sentence ("Left PTX with a visible pleural line.") or a query
            ("left apical pneumothorax", "no effusion").

    Returns:
        The assertions; empty when no finding of the vocabulary is named (a normal-study
        sentence, an indication, or a query in other words).
    """
    t = _terms()
    out: list[Assertion] = []
    for clause in _clauses(str(text)):
        absent = {name: m.start() for name, pattern in t.absent.items() if (m := pattern.search(clause))}
        mentions = sorted(
            (m.start(), m.end(), name)
            for name, pattern in t.findings.items()
            if name not in absent and (m := pattern.search(clause))
        )
        spans = [(a, b) for a, b, _ in mentions]
        hedged = bool(t.hedge.search(clause))
        found = [(pos, Assertion(name, "absent")) for name, pos in absent.items()]
        for i, (start, end, name) in enumerate(mentions):
            status: Status = "uncertain" if hedged else "absent" if _negated(clause, start, end) else "present"
            side = _side(clause, spans, i) if name in t.located else None
            found.append((start, Assertion(name, status, side)))
        out.extend(a for _, a in sorted(found, key=lambda pa: pa[0]))
    return out


def report_statements(report: str) -> list[ReportSentence]:
    """Every sentence of a report with its section and assertions, in the report's order.

    Sections are found by :func:`medvl.data.reports.extract_sections` (``keep_other``),
    so INDICATION, COMPARISON and the rest are kept, marked by their section; text
    before any heading is ``preamble``.
    """
    out: list[ReportSentence] = []
    for section, body in extract_sections(str(report or ""), keep_other=True).items():
        for sentence in split_sentences(body):
            out.append(ReportSentence(section, sentence, tuple(find_assertions(sentence))))
    return out


def _side_ok(query: Laterality | None, stated: Laterality | None) -> bool:
    if query is None:
        return True
    if query in ("left", "right"):
        return stated in (query, "bilateral")
    return stated == "bilateral"


def supports(query: Sequence[Assertion], sentence: Sequence[Assertion]) -> bool:
    """Whether a sentence backs at least one of the query's statements.

    A sentence backs a statement when it asserts the same finding with the same status
    and, if the query names a side, the same side (or both sides). A sentence that
    names no side does not back a query that names one.
    """
    return any(
        s.finding == q.finding and s.status == q.status and _side_ok(q.laterality, s.laterality)
        for q in query
        for s in sentence
    )


def report_agreement(query: Sequence[Assertion], report: str | Sequence[ReportSentence]) -> Agreement:
    """How a report's FINDINGS and IMPRESSION relate to the query's statements.

    Args:
        query: from :func:`find_assertions` of the query text.
        report: the report text, or its :func:`report_statements`.

    Returns:
        :attr:`Agreement.AGREES` when every query statement is backed by a sentence;
        :attr:`Agreement.CONTRADICTS` when a queried finding is mentioned but not as
        asked (denied, hedged, or on the other side); else :attr:`Agreement.SILENT`.
        A query with no statements is :attr:`Agreement.SILENT` for every report.
    """
    sentences = report_statements(report) if isinstance(report, str) else list(report)
    stated = [a for s in sentences if s.main for a in s.assertions]
    if not query:
        return Agreement.SILENT
    backed = [supports([q], stated) for q in query]
    if all(backed):
        return Agreement.AGREES
    mentioned = {a.finding for a in stated}
    if any(q.finding in mentioned for q, ok in zip(query, backed, strict=True) if not ok):
        return Agreement.CONTRADICTS
    return Agreement.SILENT

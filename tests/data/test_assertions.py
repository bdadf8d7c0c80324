"""Negation, hedging and laterality read from report sentences and queries.

Two references: sentences worked by hand (real-report wording, including the ones a
clinician's walk through the viewer flagged), and the synthetic corpus's own record of
what each sentence states (``meta.statements``, written by the generator, not by these
rules).
"""

from __future__ import annotations

import numpy as np
import pytest

from medvl.data.assertions import (
    Agreement,
    Assertion,
    find_assertions,
    report_agreement,
    report_statements,
    supports,
)
from medvl.findings import load_findings

STATUS = {1: "present", 0: "absent", -1: "uncertain"}
LOCATED = {f.name for f in load_findings() if f.located}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There is no pneumothorax.", [("pneumothorax", "absent", None)]),
        ("Left PTX with a visible pleural line.", [("pneumothorax", "present", "left")]),
        ("left apical pneumothorax", [("pneumothorax", "present", "left")]),
        ("No pleural effusion, pneumothorax, or focal consolidation.",
         [("pleural_effusion", "absent", None), ("pneumothorax", "absent", None), ("consolidation", "absent", None)]),
        ("No pneumothorax, but small left effusion.",
         [("pneumothorax", "absent", None), ("pleural_effusion", "present", "left")]),
        ("Effusion on the right and pneumothorax on the left.",
         [("pleural_effusion", "present", "right"), ("pneumothorax", "present", "left")]),
        ("Right effusion and left pneumothorax.",
         [("pleural_effusion", "present", "right"), ("pneumothorax", "present", "left")]),
        ("Blunting of the right costophrenic angle, cannot exclude a small effusion.",
         [("pleural_effusion", "uncertain", "right")]),
        ("Bilateral effusions, left greater than right.", [("pleural_effusion", "present", "bilateral")]),
        ("The pneumothorax has resolved.", [("pneumothorax", "absent", None)]),
        ("No change in the small left effusion.", [("pleural_effusion", "present", "left")]),  # pseudo-negation
        ("Heart size is normal.", [("cardiomegaly", "absent", None)]),
        ("Possible RLL atelectasis.", [("atelectasis", "uncertain", "right")]),
        ("Enteric tube with tip below the left hemidiaphragm.", [("support_device", "present", None)]),
        ("Lungs are clear without focal abnormality.", []),
        ("asdfgh qwerty", []),
    ],
)
def test_sentences_worked_by_hand(text, expected):
    assert [(a.finding, a.status, a.laterality) for a in find_assertions(text)] == expected


def test_a_report_is_read_by_section_and_only_results_count():
    report = ("FINDINGS: There is no pneumothorax. Small left pleural effusion.\n"
              "IMPRESSION: Left effusion.\nCOMPARISON: None.\nINDICATION: Rule out left pneumothorax.")
    sentences = report_statements(report)
    assert [(s.section, s.main) for s in sentences] == [
        ("findings", True), ("findings", True), ("impression", True), ("comparison", False), ("indication", False)]
    ptx = find_assertions("left apical pneumothorax")
    effusion = find_assertions("left pleural effusion")
    # The indication asks about a left pneumothorax; only FINDINGS/IMPRESSION say what was seen.
    assert report_agreement(ptx, report) is Agreement.CONTRADICTS
    assert report_agreement(effusion, report) is Agreement.AGREES
    assert report_agreement(find_assertions("right pleural effusion"), report) is Agreement.CONTRADICTS
    assert report_agreement(find_assertions("cardiomegaly"), report) is Agreement.SILENT
    assert report_agreement([], report) is Agreement.SILENT
    assert [supports(effusion, s.assertions) for s in sentences] == [False, True, True, False, False]


def test_sides_must_match_a_sided_query():
    left = [Assertion("pleural_effusion", "present", "left")]
    assert supports(left, [Assertion("pleural_effusion", "present", "bilateral")])
    assert not supports(left, [Assertion("pleural_effusion", "present", "right")])
    assert not supports(left, [Assertion("pleural_effusion", "present", None)])  # side not stated
    assert not supports(left, [Assertion("pleural_effusion", "absent", None)])
    assert supports([Assertion("pleural_effusion", "present")], [Assertion("pleural_effusion", "present", "right")])


def synthetic_statements(n_cxr: int, n_ct: int, seed: int) -> list[dict]:
    """The generator's statement records of a planned corpus (text only: no pixels rendered)."""
    from medvl.data.synth.config import SynthConfig
    from medvl.data.synth.plan import plan_corpus
    from medvl.data.synth.text import write_report_statements

    plans = plan_corpus(SynthConfig(n_cxr=n_cxr, n_ct=n_ct, seed=seed))
    return [st for i, plan in enumerate(plans)
            for st in write_report_statements(plan, np.random.default_rng(i))[1]]


def test_agrees_with_the_synthetic_corpus_record_of_every_sentence():
    n = wrong = 0
    for st in synthetic_statements(n_cxr=1500, n_ct=60, seed=11):
        if True:
            got = find_assertions(st["text"])
            # Laterality is read for located findings only (edema is bilateral by nature, unstated).
            want = [(f, STATUS[st["label"]], st["laterality"] if f in LOCATED else None) for f in st["findings"]]
            n += 1
            if sorted((a.finding, a.status, a.laterality) for a in got) != sorted(want):
                wrong += 1
                print(st["text"], got, want)
    assert n > 8000
    assert wrong == 0

"""Report text preparation on hand-written reports."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medvl.data.reports import (
    abbreviation_table,
    expand_abbreviations,
    extract_sections,
    prepare_report,
    split_sentences,
)
from medvl.errors import ReportError

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough, r/o PNA.

 TECHNIQUE:  Chest PA and lateral.

 COMPARISON:  ___.

 FINDINGS:

 Small b/l pleural effusions. The cardiac silhouette
 is top normal.  No PTX.

 IMPRESSION:

 Small bilateral effusions.
"""


def test_mimic_style_sections_are_found_and_others_dropped() -> None:
    s = extract_sections(MIMIC_STYLE)
    assert s == {
        "findings": "Small b/l pleural effusions. The cardiac silhouette is top normal. No PTX.",
        "impression": "Small bilateral effusions.",
    }


def test_other_sections_kept_when_asked() -> None:
    s = extract_sections(MIMIC_STYLE, keep_other=True)
    assert s["indication"] == "___F with cough, r/o PNA."
    assert s["technique"] == "Chest PA and lateral."
    assert s["comparison"] == "___."
    assert s["examination"] == "CHEST (PA AND LAT)"
    assert "FINAL REPORT" not in " ".join(s.values())


def test_headings_are_case_insensitive_and_may_share_a_line() -> None:
    s = extract_sections("Indication: fever. Findings: Lungs are clear. impression: Normal study.")
    assert s == {"findings": "Lungs are clear.", "impression": "Normal study."}


def test_conclusion_counts_as_impression_and_repeats_are_joined() -> None:
    s = extract_sections("FINDINGS: Right effusion.\nFINDINGS: Left effusion.\nCONCLUSION: Bilateral effusions.")
    assert s == {"findings": "Right effusion. Left effusion.", "impression": "Bilateral effusions."}


def test_combined_findings_and_impression_heading() -> None:
    s = extract_sections("HISTORY: cough.\nFINDINGS AND IMPRESSION: No acute process.")
    assert s == {"findings": "No acute process."}
    assert extract_sections("Findings/Impression: Clear lungs.") == {"findings": "Clear lungs."}


def test_heading_alone_on_its_line_needs_no_colon() -> None:
    s = extract_sections("FINDINGS\nNo effusion.\n\nIMPRESSION\nNormal.")
    assert s == {"findings": "No effusion.", "impression": "Normal."}
    # ... but a lower-case word alone on a wrapped line, or inside a sentence, is text.
    assert extract_sections("FINDINGS: Unchanged from prior\nfindings\nof 2019.") == {
        "findings": "Unchanged from prior findings of 2019."
    }
    assert extract_sections("FINDINGS: The impression of a mass is not confirmed.") == {
        "findings": "The impression of a mass is not confirmed."
    }


def test_multi_word_headings_with_any_spacing() -> None:
    s = extract_sections("CLINICAL  HISTORY: fever.\nREASON FOR\tEXAM: cough.\nFINDINGS: Clear.", keep_other=True)
    assert s == {"indication": "fever. cough.", "findings": "Clear."}


def test_no_heading_gives_nothing_unless_preamble_is_kept() -> None:
    assert extract_sections("The lungs are clear.") == {}
    assert extract_sections("The lungs are clear.", keep_other=True) == {"preamble": "The lungs are clear."}


def test_a_colon_inside_a_sentence_is_not_a_heading() -> None:
    s = extract_sections("FINDINGS: Compared with the prior study history: stable nodule.")
    assert s == {"findings": "Compared with the prior study history: stable nodule."}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A 1.5 cm nodule. No effusion.", ["A 1.5 cm nodule.", "No effusion."]),
        ("Discussed with Dr. Smith at 10:00. No PTX.", ["Discussed with Dr. Smith at 10:00.", "No PTX."]),
        ("Small b/l effusions. Heart size normal!", ["Small b/l effusions.", "Heart size normal!"]),
        ("1. Small effusion. 2. No pneumothorax.", ["1. Small effusion.", "2. No pneumothorax."]),
        ("Opacity, e.g. atelectasis. Stable.", ["Opacity, e.g. atelectasis.", "Stable."]),
        ("Measures approx. 12 mm. Unchanged.", ["Measures approx. 12 mm.", "Unchanged."]),
        ("Lines:\n- ETT in place.\n- NGT in stomach.", ["Lines:", "- ETT in place.", "- NGT in stomach."]),
        ("no effusion. the heart is normal", ["no effusion. the heart is normal"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Small b/l effusions, no PTX.", "Small bilateral effusions, no pneumothorax."),
        ("B/L opacities.", "Bilateral opacities."),
        ("RLL and LUL nodules.", "Right lower lobe and left upper lobe nodules."),
        ("ETT 4 cm above carina; NG tube in stomach.", "Endotracheal tube 4 cm above carina; nasogastric tube in stomach."),
        ("s/p CABG w/ sternotomy wires.", "status post CABG with sternotomy wires."),
        # Whole tokens only: not inside words, and case-sensitive acronyms stay as written.
        ("PTXs resolved; RLLX and ptx unchanged.", "Pneumothoraces resolved; RLLX and ptx unchanged."),
    ],
)
def test_expand_abbreviations(text: str, expected: str) -> None:
    assert expand_abbreviations(text) == expected


def test_abbreviation_table_is_data_with_required_entries() -> None:
    table = {a: e for a, e, _ in abbreviation_table()}
    assert table["PTX"] == "pneumothorax"
    assert table["RLL"] == "right lower lobe"
    assert table["b/l"] == "bilateral"


REPORT = {
    "findings": "Small right effusion. No PTX. Heart size is normal. Lungs otherwise clear.",
    "impression": "Small right pleural effusion.",
}


def test_prepare_report_joins_sections_and_expands() -> None:
    text = prepare_report(REPORT)
    assert text == ("Small right effusion. No pneumothorax. Heart size is normal. Lungs otherwise clear. "
                    "Small right pleural effusion.")
    assert prepare_report(REPORT, sections_to_use=("impression",), expand=False) == "Small right pleural effusion."


def test_prepare_report_truncates_at_sentence_boundaries() -> None:
    # 3 + 2 + 4 = 9 words fit in 10; adding "Lungs otherwise clear." would make 12.
    assert prepare_report(REPORT, max_words=10) == "Small right effusion. No pneumothorax. Heart size is normal."
    # First sentence alone too long: cut words.
    assert prepare_report(REPORT, max_words=2) == "Small right"


def test_prepare_report_with_a_token_count_function() -> None:
    chars = len  # a stand-in tokenizer: one token per character
    out = prepare_report(REPORT, max_words=40, length_fn=chars)
    assert out == "Small right effusion. No pneumothorax."
    assert len(out) <= 40


def test_sample_sentences_fits_keeps_order_and_varies_with_rng() -> None:
    sentences = split_sentences(prepare_report(REPORT))
    outs = set()
    for seed in range(20):
        out = prepare_report(REPORT, max_words=8, mode="sample_sentences", rng=np.random.default_rng(seed))
        assert len(out.split()) <= 8
        kept = split_sentences(out)
        idx = [sentences.index(s) for s in kept]
        assert idx == sorted(idx) and kept
        outs.add(out)
    assert len(outs) > 2
    a = prepare_report(REPORT, max_words=8, mode="sample_sentences", rng=random.Random(3))
    assert a == prepare_report(REPORT, max_words=8, mode="sample_sentences", rng=random.Random(3))


def test_short_report_is_unchanged_by_budget() -> None:
    assert prepare_report(REPORT, max_words=100, mode="sample_sentences") == prepare_report(REPORT)


@pytest.mark.parametrize("report", [{}, {"findings": "", "impression": "   "}, {"indication": "cough"}])
def test_empty_report_raises_report_error_naming_sections(report: dict[str, str]) -> None:
    with pytest.raises(ReportError, match="findings, impression"):
        prepare_report(report)


def test_bad_mode_and_budget_raise_report_error() -> None:
    with pytest.raises(ReportError, match="mode"):
        prepare_report(REPORT, mode="random")  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="max_words"):
        prepare_report(REPORT, max_words=0)


def test_budget_smaller_than_one_word_keeps_the_first_word() -> None:
    assert prepare_report(REPORT, max_words=3, length_fn=len) == "Small"


def test_non_text_input_raises_report_error() -> None:
    with pytest.raises(ReportError, match="not a string"):
        extract_sections(None)  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="not a mapping"):
        prepare_report("FINDINGS: clear")  # type: ignore[arg-type]

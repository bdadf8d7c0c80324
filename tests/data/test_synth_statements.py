"""The synthetic corpus records what each report sentence states, and the record agrees with the row."""

from __future__ import annotations

import json

import pytest

from medvl.data.reports import split_sentences
from medvl.data.synth import generate_corpus


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-statements")
    generate_corpus(out, n_cxr=40, n_ct=2, seed=3, image_size=64, ct_size=(24, 24, 16))
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_statements_are_the_report_sentences_in_order(rows):
    for row in rows:
        statements = row["meta"]["statements"]
        for section in ("findings", "impression"):
            texts = [s["text"] for s in statements if s["section"] == section]
            assert " ".join(texts) == row["report"][section]
            # One statement per sentence, as the report's own sentence splitter sees it.
            assert split_sentences(row["report"][section]) == texts


def test_statements_agree_with_labels_and_laterality(rows):
    n_lateral = 0
    for row in rows:
        truth = {g["finding"]: g for g in row["meta"]["ground_truth"]}
        for s in row["meta"]["statements"]:
            for name in s["findings"]:
                assert row["labels"][name] == s["label"], (row["study_id"], s)
            if s["label"] != 0 and s["findings"] and s["findings"][0] in truth:
                assert s["laterality"] == truth[s["findings"][0]]["laterality"]
                n_lateral += s["laterality"] in ("left", "right")
            if not s["findings"]:  # a normal-study sentence names nothing
                assert s["label"] == 0 and row["labels"].get("no_finding") in (1, 0)
    assert n_lateral > 5  # the corpus exercises laterality

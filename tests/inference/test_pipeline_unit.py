"""The Pipeline's zero-shot path on the eval room's concept-space fake model.

The fake (``tests/eval/medvl_fakes.py``) embeds a 3x3 image whose cells are the findings
and a text by the findings it names, so the right answer is known by construction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))  # --import-mode=importlib
from medvl_fakes import FakeModel

from medvl.errors import ConfigError
from medvl.findings import finding_names
from medvl.inference.calibration import Calibration, FindingCalibration
from medvl.inference.pipeline import Pipeline
from medvl.inference.preprocessing import Preprocessing
from medvl.inference.prompts import load_prompt_set
from medvl.io.image import MedicalImage

PRE = Preprocessing.from_data_config({"image_size": 9, "window": "none", "hu_range": [0, 1]})


def _image(present: set[str]) -> MedicalImage:
    """9x9 pixels: the 3x3 block of each present finding is 1 (the fake pools to 3x3 cells)."""
    cells = np.zeros(9, np.float32)
    for j, f in enumerate(finding_names()):
        if f in present:
            cells[j] = 1.0
    arr = np.kron(cells.reshape(3, 3), np.ones((3, 3), np.float32))
    return MedicalImage(arr, (1.0, 1.0), None, "CR", "MONOCHROME2", tags={"Modality": "CR"})


class CountingFake(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.text_calls = 0

    def embed_texts(self, texts):
        self.text_calls += 1
        return super().embed_texts(texts)


def test_classify_ranks_present_findings_first_and_says_uncalibrated() -> None:
    pipe = Pipeline(FakeModel(), PRE)
    r = pipe.classify(_image({"edema", "nodule"}))
    assert list(r.scores) == load_prompt_set("cxr").findings
    top2 = sorted(r.scores, key=r.scores.get, reverse=True)[:2]
    assert set(top2) == {"edema", "nodule"}
    assert r.calibrated is False and r.calibrated_findings == [] and r.scores == r.raw_scores
    assert r.ood is False and r.ood_reason == ""  # no profile: only the dims check ran
    text = str(r)
    assert "uncalibrated scores (not probabilities)" in text and "research use only" in text
    sub = pipe.classify(_image({"edema"}), findings=["edema", "nodule"])
    assert list(sub.scores) == ["edema", "nodule"] and sub.scores["edema"] > sub.scores["nodule"]


def test_prompt_embeddings_are_computed_once_per_prompt_set() -> None:
    model = CountingFake()
    pipe = Pipeline(model, PRE)
    pipe.classify(_image({"edema"}))
    first = model.text_calls
    assert first > 0
    pipe.classify(_image({"nodule"}))
    pipe.classify(_image(set()), findings=["edema"])
    assert model.text_calls == first


def test_calibrated_scores_are_the_platt_map_of_the_rule_logit() -> None:
    slope, intercept = 0.05, -2.0
    cal = Calibration("softmax", "mean", "cxr", findings={"edema": FindingCalibration(slope, intercept, 40, 10)})
    pipe = Pipeline(FakeModel(), PRE, calibration=cal)
    r = pipe.classify(_image({"edema"}))
    assert r.calibrated_findings == ["edema"] and r.calibrated is False  # the other findings are raw
    p = r.raw_scores["edema"]  # softmax rule: sigmoid(scale * (pos - neg))
    logit = np.log(p / (1 - p))
    assert r.scores["edema"] == pytest.approx(1 / (1 + np.exp(-(slope * logit + intercept))), rel=1e-6)
    only = pipe.classify(_image({"edema"}), findings=["edema"])
    assert only.calibrated is True
    # a calibration fitted for another rule does not apply
    other = pipe.classify(_image({"edema"}), findings=["edema"], scoring="positive")
    assert other.calibrated is False and other.scores == other.raw_scores


def test_unknown_finding_is_a_config_error_with_a_suggestion() -> None:
    pipe = Pipeline(FakeModel(), PRE)
    with pytest.raises(ConfigError, match="did you mean 'pleural_effusion'"):
        pipe.classify(_image(set()), findings=["pleural_efusion"])


def test_model_directory_rule_and_prompt_choice() -> None:
    pipe = Pipeline(FakeModel(), PRE, model_config={"zeroshot": {"scoring": "positive", "prompts": "ct"}})
    r = pipe.classify(_image({"edema"}))
    assert r.scoring == "positive" and r.prompt_set == "ct"
    with pytest.raises(ConfigError, match="scoring"):
        Pipeline(FakeModel(), PRE, model_config={"zeroshot": {"scoring": "softmaxx"}})


def test_a_volume_given_to_a_2d_model_is_flagged_without_running_it() -> None:
    model = FakeModel()
    pipe = Pipeline(model, PRE)
    vol = MedicalImage(np.zeros((9, 9, 4), np.float32), (1.0, 1.0, 2.0), np.eye(4), "CT", "MONOCHROME2")
    check = pipe.check_image(vol)
    assert check.ood and "3D volume given to a model trained on 2D radiographs" in check.reason
    assert model.image_calls == 0

"""Zero-shot scoring and prompt sets: hand-worked numbers and the YAML data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvl.errors import ConfigError
from medvl.eval.zeroshot import balanced_sample, multiclass_subset
from medvl.findings import finding_names
from medvl.inference.prompts import load_prompt_set, prompt_set_for_modality
from medvl.inference.zeroshot import zeroshot_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_softmax_scoring_matches_hand_computation() -> None:
    img = _unit(np.array([[1.0, 0.0], [0.6, 0.8]]))
    pos = [np.array([[1.0, 0.0]])]
    neg = [np.array([[0.0, 1.0]])]
    s = zeroshot_scores(img, pos, neg, scoring="softmax", ensemble="mean", logit_scale=10.0)
    # image 0: sims (1, 0) -> e^10 / (e^10 + e^0); image 1: (0.6, 0.8) -> e^6 / (e^6 + e^8)
    assert s[0, 0] == pytest.approx(np.exp(10) / (np.exp(10) + 1))
    assert s[1, 0] == pytest.approx(np.exp(6) / (np.exp(6) + np.exp(8)))
    assert zeroshot_scores(img, pos, scoring="positive")[:, 0] == pytest.approx([1.0, 0.6])


def test_mean_and_max_ensembles_differ_as_defined() -> None:
    img = _unit(np.array([[1.0, 0.0, 0.0]]))
    prompts = [_unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))]
    # max: best single prompt (1.0); mean: normalised centroid (1, 1, 0)/sqrt2 -> 1/sqrt2
    assert zeroshot_scores(img, prompts, scoring="positive", ensemble="max")[0, 0] == pytest.approx(1.0)
    assert zeroshot_scores(img, prompts, scoring="positive", ensemble="mean")[0, 0] == pytest.approx(2**-0.5)
    with pytest.raises(ValueError):
        zeroshot_scores(img, prompts, scoring="positive", ensemble="median")


def test_multiclass_subset_keeps_single_positive_rows() -> None:
    nan = np.nan
    labels = np.array([
        [1, 0, nan],   # one positive -> class 0
        [1, 1, 0],     # two positives -> out
        [0, nan, 1],   # class 2
        [0, -1, 1],    # uncertain among the classes -> out
        [0, 0, 0],     # none -> out
    ])
    rows, targets = multiclass_subset(labels, [0, 1, 2])
    assert rows.tolist() == [0, 2] and targets.tolist() == [0, 2]


def test_balanced_sample_caps_each_class() -> None:
    t = np.array([0] * 10 + [1] * 3)
    keep = balanced_sample(t, 4, seed=0)
    assert np.bincount(t[keep]).tolist() == [4, 3]
    assert balanced_sample(t, None, 0).tolist() == list(range(13))


def test_builtin_prompt_sets_cover_their_modalities() -> None:
    cxr = load_prompt_set("cxr")
    assert set(cxr.findings) == set(finding_names("CR"))
    ct = prompt_set_for_modality("CT")
    assert ct.name == "ct" and set(ct.findings) == set(finding_names("CT"))
    for ps in (cxr, ct):
        for f in ps.findings:
            assert ps.positive[f] and ps.negative[f]
            assert not set(ps.positive[f]) & set(ps.negative[f]), f
    # Templates are filled with every name, capitalised where the template asks.
    assert "There is pleural effusion." in cxr.positive["pleural_effusion"]
    assert "Pneumothorax is present." in cxr.positive["pneumothorax"]
    assert "No evidence of effusion." in cxr.negative["pleural_effusion"]
    # no_finding opts out of templates ("There is no acute ..." would read backwards).
    assert not any(p.startswith("There is no acute") for p in cxr.positive["no_finding"])


def test_bad_prompt_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_set(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("findings:\n  edema:\n    names: []\n")
    with pytest.raises(ConfigError, match="findings.edema"):
        load_prompt_set(bad)
    bad.write_text("findings: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_prompt_set(bad)
    with pytest.raises(ConfigError, match="MR"):
        prompt_set_for_modality("MR")



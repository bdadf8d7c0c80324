"""Platt calibration: against scikit-learn, hand-worked ECE, and what calibration promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from medvl.errors import CheckpointError
from medvl.inference.calibration import (
    FILE_NAME,
    Calibration,
    brier_score,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
)


def test_ece_worked_by_hand() -> None:
    # 4 bins: [0, .25) holds .1, .2 (mean .15, 1 of 2 positive: |.5 - .15| = .35, weight 2/5);
    # [.75, 1] holds .8, .9, 1.0 (mean .9, 3 of 3 positive: |1 - .9| = .1, weight 3/5).
    probs = np.array([0.1, 0.2, 0.8, 0.9, 1.0])
    labels = np.array([0, 1, 1, 1, 1])
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.4 * 0.35 + 0.6 * 0.1)


def test_brier_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    p, y = rng.random(50), rng.integers(0, 2, 50)
    assert brier_score(p, y) == pytest.approx(brier_score_loss(y, p))


def test_platt_fit_equals_a_logistic_regression_on_platts_targets() -> None:
    """Platt's smoothed targets as sample weights: each study is a positive with weight t and a negative with 1 - t."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=300) * 20
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.08 * z - 0.5)))).astype(float)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    ref = LogisticRegression(C=1e12, tol=1e-10, max_iter=10_000).fit(
        np.concatenate([z, z])[:, None], np.concatenate([np.ones_like(z), np.zeros_like(z)]),
        sample_weight=np.concatenate([t, 1 - t]))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(float(ref.coef_[0, 0]), rel=1e-3)
    assert b == pytest.approx(float(ref.intercept_[0]), rel=1e-3, abs=1e-3)


def _overconfident(n: int, seed: int, direction: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits 20x too sharp: the raw sigmoid says ~0 or ~1, the truth is much softer."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n) * 40
    y = (rng.random(n) < 1 / (1 + np.exp(-(direction * 0.05 * z - 1.0)))).astype(float)
    return z, 1 / (1 + np.exp(-z)), y


def test_calibration_lowers_ece_and_brier_on_held_out_data_and_keeps_auroc() -> None:
    z_val, s_val, y_val = _overconfident(400, 2)
    z_te, s_te, y_te = _overconfident(400, 3)
    cal = fit_calibration(z_val[:, None], s_val[:, None], y_val[:, None], ["edema"], scoring="softmax",
                          ensemble="mean", prompt_set="cxr")
    fc = cal.findings["edema"]
    after = fc.apply(z_te)
    assert expected_calibration_error(after, y_te) < 0.5 * expected_calibration_error(s_te, y_te)
    assert brier_score(after, y_te) < brier_score(s_te, y_te)
    # the ranking of the rule's logits is kept; the raw sigmoid rounds the most confident
    # studies to exactly 1.0 and so ties them: the calibrated scores can only rank better
    assert roc_auc_score(y_te, after) == pytest.approx(roc_auc_score(y_te, z_te))
    assert roc_auc_score(y_te, after) >= roc_auc_score(y_te, s_te)
    assert set(fc.validation) >= {"ece_before", "ece_after", "brier_before", "brier_after", "auroc"}
    assert fc.validation["ece_after"] < fc.validation["ece_before"]


def test_a_finding_ranked_backwards_keeps_its_ranking_and_gets_its_prevalence() -> None:
    z, s, y = _overconfident(400, 4, direction=-1.0)
    cal = fit_calibration(z[:, None], s[:, None], y[:, None], ["nodule"], scoring="softmax", ensemble="mean",
                          prompt_set="cxr")
    fc = cal.findings["nodule"]
    assert fc.slope > 0  # strictly increasing map: AUROC unchanged on any set
    p = fc.apply(z)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, z))
    assert np.ptp(p) < 0.05 and p.mean() == pytest.approx(y.mean(), abs=0.05)


def test_findings_with_too_few_labels_stay_uncalibrated_and_uncertain_labels_are_left_out() -> None:
    z, s, y = _overconfident(60, 5)
    labels = np.stack([y, np.r_[np.ones(3), np.zeros(57)], np.full(60, np.nan)], axis=1)
    labels[:10, 0] = -1  # uncertain
    cal = fit_calibration(np.stack([z] * 3, 1), np.stack([s] * 3, 1), labels, ["a", "b", "c"],
                          scoring="softmax", ensemble="mean", prompt_set="cxr")
    assert list(cal.findings) == ["a"] and cal.findings["a"].n == 50
    assert "3 positive" in cal.uncalibrated["b"] and "0 positive and 0 negative" in cal.uncalibrated["c"]


def test_file_round_trip_and_newer_versions_are_refused(tmp_path) -> None:
    z, s, y = _overconfident(100, 6)
    cal = fit_calibration(z[:, None], s[:, None], y[:, None], ["edema"], scoring="softmax", ensemble="mean",
                          prompt_set="cxr")
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and back.findings["edema"].slope == pytest.approx(cal.findings["edema"].slope)
    assert back.matches("softmax", "mean", "cxr") and not back.matches("positive", "mean", "cxr")
    assert Calibration.load(tmp_path / "none") is None
    doc = json.loads((tmp_path / FILE_NAME).read_text())
    doc["format_version"] = 99
    (tmp_path / FILE_NAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format_version"):
        Calibration.load(tmp_path)

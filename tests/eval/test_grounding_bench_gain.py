"""The grounding benchmark's image-specific pointing: a prior scores no gain, an image-following map does."""

from __future__ import annotations

import numpy as np

from benchmarks.grounding.evaluate import Case, other_mask_hits, summarize


def _case(i: int, col: int) -> Case:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, col : col + 2] = True
    return Case(f"s{i}", i, "pleural_effusion", None, "pleural effusion", mask)


def test_prior_scores_no_gain_and_image_map_does() -> None:
    cases = [_case(i, col) for i, col in enumerate([0, 0, 6, 6])]
    # a prior: the same peak on every image (at the left masks' place)
    prior_peak = np.zeros((8, 8), dtype=bool)
    prior_peak[2, 0] = True
    prior = [{"finding": c.finding, "laterality": None, "hit": float(np.any(prior_peak & c.mask))} for c in cases]
    for r, h in zip(prior, other_mask_hits([prior_peak] * 4, cases), strict=True):
        r["hit_other"] = h
    # hits 2 of 4 own masks; against others: the left cases see 1 left + 2 right -> 1/3, right cases 2/3
    s = summarize(prior, ("pleural_effusion",))
    assert s["pointing_game"] == 0.5
    assert abs(s["pointing_game_other"] - 0.5) < 1e-12
    assert abs(s["pointing_gain"]) < 1e-12
    # a map that peaks inside each image's own mask
    peaks = [c.mask & (np.arange(8)[None, :] == np.argmax(c.mask.any(0))) & (np.arange(8)[:, None] == 2)
             for c in cases]
    own = [{"finding": c.finding, "laterality": None, "hit": 1.0} for c in cases]
    for r, h in zip(own, other_mask_hits(peaks, cases), strict=True):
        r["hit_other"] = h
    s = summarize(own, ("pleural_effusion",))
    assert abs(s["pointing_game_other"] - 1 / 3) < 1e-12  # one of three others shares the side
    assert abs(s["pointing_gain"] - 2 / 3) < 1e-12


def test_other_cases_need_the_same_phrase_and_another_image() -> None:
    a, b = _case(0, 0), _case(0, 0)  # same image twice: no other case
    c = Case("s2", 1, "pleural_effusion", "left", "left pleural effusion", a.mask)
    out = other_mask_hits([a.mask, a.mask, a.mask], [a, b, c])
    assert all(np.isnan(v) for v in out)

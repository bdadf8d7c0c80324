"""FILIP token-wise term: hand-worked values, a word-by-word scalar reference, masking."""

from __future__ import annotations

import math
import random

import pytest
import torch
from token_cases import F64, ce, outputs

from medvl.errors import ConfigError
from medvl.losses import build_loss
from medvl.models.outputs import EncoderOutput


def filip(**cfg):
    return build_loss({"terms": {"filip": cfg}})


def test_two_pairs_by_hand() -> None:
    # Report 0 has words e1 and e2, report 1 the word e2 only; image 0 has regions e1
    # and (0.6, 0.8), image 1 the region e2 twice.
    words = [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]]
    wmask = torch.tensor([[True, True], [True, False]])
    regions = [[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 1.0]]]
    # s_text[t][i]: mean over report t's words of the best cosine over image i's regions.
    s_text = [[(1.0 + 0.8) / 2, (0.0 + 1.0) / 2], [0.8, 1.0]]
    # s_image[t][i]: mean over image i's regions of the best cosine over report t's words.
    s_image = [[(1.0 + 0.8) / 2, (1.0 + 1.0) / 2], [(0.0 + 0.8) / 2, 1.0]]
    tau = 0.5
    out = filip(temperature=tau)(*outputs(words, regions, word_mask=wmask))
    t2i = sum(ce([s_text[t][i] / tau for i in range(2)], t) for t in range(2)) / 2
    i2t = sum(ce([s_image[t][i] / tau for t in range(2)], i) for i in range(2)) / 2
    assert out["filip_loss"].item() == pytest.approx(0.5 * t2i + 0.5 * i2t, rel=1e-12)


def scalar_scores(words, wvalid, regions, rvalid, baseline="none") -> tuple[float, float]:
    """FILIP's two scores of one report and one image, token by token."""
    def unit(x):
        n = math.sqrt(sum(v * v for v in x))
        return [v / n for v in x]

    ws = [unit(w) for w, ok in zip(words, wvalid, strict=True) if ok]
    rs = [unit(r) for r, ok in zip(regions, rvalid, strict=True) if ok]
    cos = [[sum(a * b for a, b in zip(w, r, strict=True)) for r in rs] for w in ws]
    cols = [[cos[t][j] for t in range(len(ws))] for j in range(len(rs))]
    if baseline == "mean":  # each token's best match minus its mean match
        s_text = sum(max(row) - sum(row) / len(row) for row in cos) / len(ws)
        s_image = sum(max(col) - sum(col) / len(col) for col in cols) / len(rs)
    else:
        s_text = sum(max(row) for row in cos) / len(ws)
        s_image = sum(max(col) for col in cols) / len(rs)
    return s_text, s_image


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_matches_scalar_reference_with_padding(baseline: str) -> None:
    rng = random.Random(3)
    b, t, n, d = 3, 5, 4, 6
    words = [[[rng.gauss(0, 1) for _ in range(d)] for _ in range(t)] for _ in range(b)]
    regions = [[[rng.gauss(0, 1) for _ in range(d)] for _ in range(n)] for _ in range(b)]
    wvalid = [[True] * 5, [True, True, False, False, False], [True, False, True, True, False]]
    rvalid = [[True] * 4, [True, True, True, False], [False, True, True, True]]
    # Padding holds values that would win every maximum if they took part.
    for i in range(b):
        for k in range(t):
            if not wvalid[i][k]:
                words[i][k] = [50.0] * d
        for k in range(n):
            if not rvalid[i][k]:
                regions[i][k] = [50.0] * d
    tau, wt, wi = 0.2, 0.7, 0.3
    out = filip(temperature=tau, text_to_image_weight=wt, image_to_text_weight=wi, baseline=baseline)(
        *outputs(words, regions, torch.tensor(wvalid), torch.tensor(rvalid)))
    st = [[0.0] * b for _ in range(b)]
    si = [[0.0] * b for _ in range(b)]
    for a in range(b):
        for c in range(b):
            st[a][c], si[a][c] = scalar_scores(words[a], wvalid[a], regions[c], rvalid[c], baseline)
    t2i = sum(ce([st[a][c] / tau for c in range(b)], a) for a in range(b)) / b
    i2t = sum(ce([si[a][c] / tau for a in range(b)], c) for c in range(b)) / b
    assert out["filip_loss"].item() == pytest.approx(wt * t2i + wi * i2t, rel=1e-10)


def test_gradient_reaches_only_the_best_region_of_each_word() -> None:
    # Every word of every report has its maximum at region 0 of each image (region 1
    # points away from all words); region 1's best word is counted
    # too (image-to-text direction); switching that direction off leaves region 1
    # without gradient: the hard maximum routes a word's signal to one region.
    words = torch.tensor([[[1.0, 0.0], [0.9, 0.1]], [[0.0, 1.0], [0.1, 0.9]]], dtype=F64)
    regions = torch.tensor([[[1.0, 0.1], [-1.0, -1.0]], [[0.1, 1.0], [-1.0, -0.9]]], dtype=F64, requires_grad=True)
    image, text = outputs(words, regions.detach())
    image = EncoderOutput(image.embeds, regions, None, (2,))
    out = filip(image_to_text_weight=0.0, text_to_image_weight=1.0)(image, text)
    out["filip_loss"].backward()
    g = regions.grad.abs().sum(dim=-1)
    assert torch.all(g[:, 0] > 0)
    assert torch.all(g[:, 1] == 0)


def test_bad_settings_named() -> None:
    with pytest.raises(ConfigError, match="loss.terms.filip.temperature"):
        filip(temperature=0.0)
    with pytest.raises(ConfigError, match="loss.terms.filip.baseline"):
        filip(baseline="median")
    with pytest.raises(ConfigError, match="loss.terms.filip.image_to_text_weight"):
        filip(image_to_text_weight=-1.0)


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_invariances(baseline: str) -> None:
    torch.manual_seed(0)
    b, t, n, d = 4, 6, 5, 8
    words, regions = torch.randn(b, t, d, dtype=F64), torch.randn(b, n, d, dtype=F64)
    wmask = torch.rand(b, t) > 0.3
    wmask[:, 0] = True
    loss = filip(temperature=0.3, baseline=baseline)
    base = loss(*outputs(words, regions, wmask))["filip_loss"]
    # pairs permuted together
    perm = torch.tensor([2, 0, 3, 1])
    assert loss(*outputs(words[perm], regions[perm], wmask[perm]))["filip_loss"].item() == pytest.approx(base.item(), rel=1e-12)
    # positive scale of either side
    assert loss(*outputs(3.0 * words, 0.5 * regions, wmask))["filip_loss"].item() == pytest.approx(base.item(), rel=1e-12)
    # tokens reordered within a sample, and padding with arbitrary values appended
    tperm, nperm = torch.randperm(t), torch.randperm(n)
    assert loss(*outputs(words[:, tperm], regions[:, nperm], wmask[:, tperm]))["filip_loss"].item() == pytest.approx(
        base.item(), rel=1e-12)
    padded_w = torch.cat([words, 100 * torch.randn(b, 2, d, dtype=F64)], dim=1)
    padded_m = torch.cat([wmask, torch.zeros(b, 2, dtype=torch.bool)], dim=1)
    padded_r = torch.cat([regions, 100 * torch.randn(b, 3, d, dtype=F64)], dim=1)
    rmask = torch.cat([torch.ones(b, n, dtype=torch.bool), torch.zeros(b, 3, dtype=torch.bool)], dim=1)
    assert loss(*outputs(padded_w, padded_r, padded_m, rmask))["filip_loss"].item() == pytest.approx(base.item(), rel=1e-12)


def test_mean_baseline_scores_what_stands_out_in_the_image() -> None:
    # With the baseline a word scores its best region minus its mean over the image's
    # regions: an image whose regions are all alike scores 0 for every word, however
    # well they match it (image 1 below matches word e1 perfectly everywhere), so
    # content every token of an image shares earns nothing. Worked by hand:
    # report 0 (word e1) vs image 0 (regions e1, e2): 1 - 0.5; vs image 1 (e1, e1): 1 - 1.
    # report 1 (word e2) vs image 0: 1 - 0.5; vs image 1: 0 - 0.
    # Each region's best word over one-word reports minus its mean over one word: 0.
    words = [[[1.0, 0.0]], [[0.0, 1.0]]]
    regions = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]
    s_text = [[0.5, 0.0], [0.5, 0.0]]
    s_image = [[0.0, 0.0], [0.0, 0.0]]
    tau = 0.25
    out = filip(temperature=tau, baseline="mean")(*outputs(words, regions))
    t2i = sum(ce([s_text[t][i] / tau for i in range(2)], t) for t in range(2)) / 2
    i2t = sum(ce([s_image[t][i] / tau for t in range(2)], i) for i in range(2)) / 2
    assert out["filip_loss"].item() == pytest.approx(0.5 * t2i + 0.5 * i2t, rel=1e-12)

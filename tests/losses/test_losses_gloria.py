"""GLoRIA local term: hand-worked values, a per-pair scalar reference, invariances."""

from __future__ import annotations

import math

import pytest
import torch
from token_cases import F64, ce, outputs

from medvl.losses import build_loss


def gloria(**cfg):
    return build_loss({"terms": {"gloria": cfg}})


def test_single_word_reports_by_hand() -> None:
    # With one word the softmax over words is 1 for every region, so the word attends
    # uniformly and its context is the mean region. Pair scores are then
    # aggregation_scale * cos(word, mean region).
    words = [[[1.0, 0.0]], [[0.0, 1.0]]]
    regions = [[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 1.0]]]
    r = [[0.8 / math.sqrt(0.8), 0.0], [0.4 / math.sqrt(0.8), 1.0]]  # r[text][image]
    a, s = 1.5, 2.0  # aggregation_scale, similarity_scale
    out = gloria(aggregation_scale=a, similarity_scale=s)(*outputs(words, regions))
    logits_t2i = [[s * a * r[t][i] for i in range(2)] for t in range(2)]
    t2i = (ce(logits_t2i[0], 0) + ce(logits_t2i[1], 1)) / 2
    i2t = (ce([logits_t2i[0][0], logits_t2i[1][0]], 0) + ce([logits_t2i[0][1], logits_t2i[1][1]], 1)) / 2
    assert out["gloria_loss"].item() == pytest.approx(i2t + t2i, rel=1e-9)
    # The paper's 1/tau2 exponent removes aggregation_scale from one-word scores.
    paper = gloria(aggregation_scale=a, similarity_scale=s, divide_by_aggregation_scale=True,
                   image_to_text_weight=0.5, text_to_image_weight=0.5)(*outputs(words, regions))
    logits_t2i = [[s * r[t][i] for i in range(2)] for t in range(2)]
    t2i = (ce(logits_t2i[0], 0) + ce(logits_t2i[1], 1)) / 2
    i2t = (ce([logits_t2i[0][0], logits_t2i[1][0]], 0) + ce([logits_t2i[0][1], logits_t2i[1][1]], 1)) / 2
    assert paper["gloria_loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)


def scalar_score(words, wvalid, regions, rvalid, t1, t2, agg="sum", normalize=True) -> float:
    """GLoRIA's pair score Z for one report and one image, word by word."""
    def norm(x):
        n = math.sqrt(sum(v * v for v in x))
        return [v / n for v in x]

    if normalize:
        words, regions = [norm(w) for w in words], [norm(v) for v in regions]
    ws = [i for i, ok in enumerate(wvalid) if ok]
    rs = [j for j, ok in enumerate(rvalid) if ok]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))
    s = {(i, j): dot(words[i], regions[j]) for i in ws for j in rs}
    s_norm = {}
    for j in rs:  # softmax over the words, for each region
        z = sum(math.exp(s[i, j]) for i in ws)
        for i in ws:
            s_norm[i, j] = math.exp(s[i, j]) / z
    total = 0.0
    for i in ws:
        z = sum(math.exp(t1 * s_norm[i, j]) for j in rs)
        a = {j: math.exp(t1 * s_norm[i, j]) / z for j in rs}
        c = [sum(a[j] * regions[j][d] for j in rs) for d in range(len(words[i]))]
        cos = dot(c, words[i]) / math.sqrt(dot(c, c) * dot(words[i], words[i]))
        total += math.exp(t2 * cos)
    if agg == "mean":
        total /= len(ws)
    return math.log(total)


@pytest.mark.parametrize("agg,normalize", [("sum", True), ("mean", True), ("sum", False)])
def test_matches_per_pair_scalar_reference(agg: str, normalize: bool) -> None:
    g = torch.Generator().manual_seed(5)
    b, t, n, d = 3, 4, 5, 3
    words = torch.randn(b, t, d, generator=g, dtype=F64)
    regions = torch.randn(b, n, d, generator=g, dtype=F64)
    wmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    rmask = torch.ones(b, n, dtype=torch.bool)
    rmask[1, 3:] = False  # a volume with fewer slices than the longest in the batch
    cfg = {"attention_scale": 4.0, "aggregation_scale": 5.0, "similarity_scale": 0.7,
           "aggregation": agg, "normalize_inputs": normalize}
    out = gloria(**cfg)(*outputs(words, regions, wmask, rmask))
    z = [[scalar_score(words[ti].tolist(), wmask[ti].tolist(), regions[ii].tolist(), rmask[ii].tolist(),
                       4.0, 5.0, agg, normalize) for ii in range(b)] for ti in range(b)]
    logits = [[0.7 * z[ti][ii] for ii in range(b)] for ti in range(b)]
    t2i = sum(ce(logits[k], k) for k in range(b)) / b
    i2t = sum(ce([logits[ti][k] for ti in range(b)], k) for k in range(b)) / b
    assert out["gloria_loss"].item() == pytest.approx(t2i + i2t, rel=1e-9)


def test_invariances_and_padding() -> None:
    loss = gloria(similarity_scale=1.0, normalize_inputs=True)  # scale invariance needs unit vectors
    g = torch.Generator().manual_seed(9)
    words = torch.randn(4, 5, 3, generator=g, dtype=F64)
    regions = torch.randn(4, 8, 3, generator=g, dtype=F64)
    wmask = torch.rand(4, 5, generator=g) > 0.3
    wmask[:, 0] = True
    ref = loss(*outputs(words, regions, wmask))["gloria_loss"].item()
    perm = torch.tensor([1, 3, 0, 2])
    assert loss(*outputs(words[perm], regions[perm], wmask[perm]))["gloria_loss"].item() == pytest.approx(
        ref, rel=1e-12)
    assert loss(*outputs(words * 3.0, regions * 0.1, wmask))["gloria_loss"].item() == pytest.approx(ref, rel=1e-9)
    padded_w = torch.cat([words, torch.full((4, 2, 3), 40.0, dtype=F64)], 1)
    padded_m = torch.cat([wmask, torch.zeros(4, 2, dtype=torch.bool)], 1)
    padded_r = torch.cat([regions, torch.full((4, 1, 3), -7.0, dtype=F64)], 1)
    rmask = torch.cat([torch.ones(4, 8, dtype=torch.bool), torch.zeros(4, 1, dtype=torch.bool)], 1)
    assert loss(*outputs(padded_w, padded_r, padded_m, rmask))["gloria_loss"].item() == pytest.approx(
        ref, rel=1e-9)


def test_matching_pairs_score_lower_than_shuffled() -> None:
    g = torch.Generator().manual_seed(2)
    regions = torch.randn(4, 6, 8, generator=g, dtype=F64)
    words = regions[:, :3] + 0.05 * torch.randn(4, 3, 8, generator=g, dtype=F64)  # words echo regions
    loss = gloria()
    matched = loss(*outputs(words, regions))["gloria_loss"].item()
    shuffled = loss(*outputs(words[[1, 2, 3, 0]], regions))["gloria_loss"].item()
    assert matched < 0.1 < shuffled


def test_default_attends_with_features_as_given() -> None:
    # On unit vectors the word-to-region attention cannot be sharp: softmax over 30
    # words of cosines in [-1, 1], times attention_scale 4, spans well under 1 in logits
    # (the largest region weight stays near uniform). With the features as given
    # (GLoRIA's code, the default) the regions a word dominates share its attention.
    from medvl.losses.token_gloria import GloriaConfig, gloria_pair_scores

    g = torch.Generator().manual_seed(4)
    n, t, d = 16, 30, 8
    regions = torch.randn(1, n, d, generator=g, dtype=F64)
    words = torch.randn(1, t, d, generator=g, dtype=F64)
    words[0, 0] = 10.0 * regions[0, 5]  # word 0 names region 5
    wv, rv = torch.ones(1, t, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)
    assert GloriaConfig().normalize_inputs is False
    _, attn_raw = gloria_pair_scores(words, wv, regions, rv, GloriaConfig())
    unit = torch.nn.functional.normalize
    _, attn_unit = gloria_pair_scores(unit(words, dim=-1), wv, unit(regions, dim=-1), rv, GloriaConfig())
    assert attn_unit[0, 0].max() < 1.3 / n  # near uniform, every word
    raw = attn_raw[0, 0, 0]
    assert raw.max() > 1.9 / n and raw[5] >= raw.max() - 1e-9  # word 0 peaks at its region

"""MGCA token term: hand-worked values, a scalar reference of the paper's formula, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.errors import ConfigError
from medvl.losses import LossInputError, build_loss
from medvl.losses.common import token_weights
from medvl.models.outputs import EncoderOutput

F64 = torch.float64


def outputs(words, patches, word_mask=None, patch_mask=None, word_att=None, patch_att=None, grid=None):
    words = torch.as_tensor(words, dtype=F64)
    patches = torch.as_tensor(patches, dtype=F64)
    b = words.shape[0]
    g = torch.Generator().manual_seed(7)
    image = EncoderOutput(torch.randn(b, words.shape[2], generator=g, dtype=F64), patches,
                          patch_mask, grid or (patches.shape[1],), patch_att)
    text = EncoderOutput(torch.randn(b, words.shape[2], generator=g, dtype=F64), words, word_mask, None, word_att)
    return image, text


def term(**cfg):
    return build_loss({"terms": {"token": {"weight_clip_quantiles": None, **cfg}}}, embed_dim=2)


def test_sharp_attention_on_matching_tokens_gives_closed_form() -> None:
    # Words equal patches and are orthonormal; with very sharp attention each word's
    # context is its own patch, so the similarity matrix is I / tau and each of the
    # four cross entropies is log(1 + exp(-1/tau)).
    eye = [[[1.0, 0.0], [0.0, 1.0]]]
    out = term(attention_temperature=1e-3, temperature=0.1)(*outputs(eye, eye))
    expected = math.log1p(math.exp(-10.0))
    assert out["token_word_loss"].item() == pytest.approx(expected, rel=1e-9)
    assert out["token_patch_loss"].item() == pytest.approx(expected, rel=1e-9)
    assert out["token_loss"].item() == pytest.approx(2 * expected, rel=1e-9)


def _norm(x: list[float]) -> list[float]:
    n = math.sqrt(sum(v * v for v in x))
    return [v / n for v in x]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def scalar_half(queries, keys, q_valid, k_valid, weights, tau_a, tau, normalize_ctx=True) -> float:
    """One half of MGCA's CTA for one sample, term by term from the paper's equations."""
    qs = [_norm(q) for q in queries]
    ks = [_norm(k) for k in keys]
    ctx = []
    for q in qs:
        a = [math.exp(_dot(q, k) / tau_a) if kv else 0.0 for k, kv in zip(ks, k_valid, strict=True)]
        z = sum(a)
        c = [sum(a[j] * ks[j][d] for j in range(len(ks))) / z for d in range(len(q))]
        ctx.append(_norm(c) if normalize_ctx else c)
    valid = [i for i, v in enumerate(q_valid) if v]
    total = 0.0
    for r in valid:
        lse1 = math.log(sum(math.exp(_dot(qs[r], ctx[k]) / tau) for k in valid))
        lse2 = math.log(sum(math.exp(_dot(ctx[r], qs[k]) / tau) for k in valid))
        ce1 = lse1 - _dot(qs[r], ctx[r]) / tau
        ce2 = lse2 - _dot(ctx[r], qs[r]) / tau
        total += weights[r] * (ce1 + ce2) / 2
    return total


@pytest.mark.parametrize("normalize_ctx", [True, False])
def test_matches_scalar_reference_with_padding_and_attention_weights(normalize_ctx: bool) -> None:
    g = torch.Generator().manual_seed(3)
    b, t, n, d = 3, 4, 5, 3
    words = torch.randn(b, t, d, generator=g, dtype=F64)
    patches = torch.randn(b, n, d, generator=g, dtype=F64)
    wmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    watt = torch.rand(b, t, generator=g, dtype=F64) * wmask
    patt = torch.rand(b, n, generator=g, dtype=F64)
    loss = term(attention_temperature=0.3, temperature=0.2, normalize_patch_context=normalize_ctx)
    out = loss(*outputs(words, patches, wmask, None, watt, patt))
    word_ref = patch_ref = 0.0
    for i in range(b):
        wv = wmask[i].tolist()
        ww = [a / sum(watt[i].tolist()) for a in watt[i].tolist()]
        pw = [a / sum(patt[i].tolist()) for a in patt[i].tolist()]
        word_ref += scalar_half(words[i].tolist(), patches[i].tolist(), wv, [True] * n, ww, 0.3, 0.2)
        patch_ref += scalar_half(patches[i].tolist(), words[i].tolist(), [True] * n, wv, pw, 0.3, 0.2,
                                 normalize_ctx)
    assert out["token_word_loss"].item() == pytest.approx(word_ref / b, rel=1e-9)
    assert out["token_patch_loss"].item() == pytest.approx(patch_ref / b, rel=1e-9)


def test_token_weights_uniform_clipped_and_masked() -> None:
    mask = torch.tensor([[True, True, True, False]])
    assert token_weights(None, mask, dtype=F64).tolist() == [[1 / 3, 1 / 3, 1 / 3, 0.0]]
    att = torch.tensor([[0.0, 1.0, 3.0, 100.0]], dtype=F64)  # 100 is padding: ignored
    w = token_weights(att, mask, (0.25, 0.75))
    # quantiles of (0, 1, 3) at 0.25 and 0.75 (linear): 0.5 and 2 -> weights (0.5, 1, 2) / 3.5
    assert w[0].tolist() == pytest.approx([0.5 / 3.5, 1 / 3.5, 2 / 3.5, 0.0])
    assert token_weights(att, mask)[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 0.0])


def random_case(b=4, t=5, n=6, d=3, seed=0, grid=None):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(b, t, d, generator=g, dtype=F64)
    patches = torch.randn(b, n, d, generator=g, dtype=F64)
    wmask = torch.rand(b, t, generator=g) > 0.3
    wmask[:, 0] = True
    watt = torch.rand(b, t, generator=g, dtype=F64) * wmask
    patt = torch.rand(b, n, generator=g, dtype=F64)
    return words, patches, wmask, watt, patt


@pytest.mark.parametrize("cfg", [{}, {"weight_clip_quantiles": [0.1, 0.9], "normalize_patch_context": False}])
def test_invariances(cfg: dict) -> None:
    loss = term(**cfg)
    words, patches, wmask, watt, patt = random_case(n=8)
    grid = (2, 2, 2)  # a native-3D tower: 8 patch tokens
    ref = loss(*outputs(words, patches, wmask, None, watt, patt, grid))["token_loss"].item()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = loss(*outputs(words[perm], patches[perm], wmask[perm], None, watt[perm], patt[perm], grid))
    assert permuted["token_loss"].item() == pytest.approx(ref, rel=1e-12)
    scaled = loss(*outputs(words * 5.0, patches * 0.2, wmask, None, watt, patt, grid))
    assert scaled["token_loss"].item() == pytest.approx(ref, rel=1e-9)
    # Attention weights are used up to scale (they are normalised per sample).
    reweighted = loss(*outputs(words, patches, wmask, None, watt * 3.0, patt * 0.5, grid))
    assert reweighted["token_loss"].item() == pytest.approx(ref, rel=1e-9)
    # Reordering the tokens inside a sample does not matter either.
    tp, np_ = torch.tensor([4, 2, 0, 1, 3]), torch.tensor([7, 1, 5, 3, 0, 2, 6, 4])
    reordered = loss(*outputs(words[:, tp], patches[:, np_], wmask[:, tp], None, watt[:, tp], patt[:, np_], grid))
    assert reordered["token_loss"].item() == pytest.approx(ref, rel=1e-9)


def test_padding_tokens_change_nothing() -> None:
    loss = term()
    words, patches, wmask, watt, patt = random_case()
    ref = loss(*outputs(words, patches, wmask, None, watt, patt))
    garbage_w = torch.full((4, 3, 3), 50.0, dtype=F64)
    garbage_p = torch.full((4, 2, 3), -9.0, dtype=F64)
    out = loss(*outputs(
        torch.cat([words, garbage_w], 1), torch.cat([patches, garbage_p], 1),
        torch.cat([wmask, torch.zeros(4, 3, dtype=torch.bool)], 1),
        torch.cat([torch.ones(4, 6, dtype=torch.bool), torch.zeros(4, 2, dtype=torch.bool)], 1),
        torch.cat([watt, torch.ones(4, 3, dtype=F64)], 1), torch.cat([patt, torch.ones(4, 2, dtype=F64)], 1),
    ))
    assert out["token_loss"].item() == pytest.approx(ref["token_loss"].item(), rel=1e-9)


def test_missing_attention_means_uniform_weights() -> None:
    loss = term()
    words, patches, wmask, _, _ = random_case()
    uniform = wmask.to(F64)
    a = loss(*outputs(words, patches, wmask, None, None, None))["token_loss"].item()
    b = loss(*outputs(words, patches, wmask, None, uniform, torch.ones(4, 6, dtype=F64)))["token_loss"].item()
    assert a == pytest.approx(b, rel=1e-12)


def test_uniform_weighting_overrides_tower_attention() -> None:
    words, patches, wmask, watt, patt = random_case()
    forced = term(word_weights="uniform", patch_weights="uniform")(*outputs(words, patches, wmask, None, watt, patt))
    none = term()(*outputs(words, patches, wmask, None, None, None))
    assert forced["token_loss"].item() == pytest.approx(none["token_loss"].item(), rel=1e-12)
    only_patch = term(patch_weights="uniform")(*outputs(words, patches, wmask, None, watt, patt))
    with_att = term()(*outputs(words, patches, wmask, None, watt, patt))
    assert only_patch["token_word_loss"].item() == pytest.approx(with_att["token_word_loss"].item(), rel=1e-12)
    assert only_patch["token_patch_loss"].item() != pytest.approx(with_att["token_patch_loss"].item(), rel=1e-6)


def test_unidirectional_is_the_word_half() -> None:
    words, patches, wmask, watt, patt = random_case()
    both = term()(*outputs(words, patches, wmask, None, watt, patt))
    one = term(bidirectional=False)(*outputs(words, patches, wmask, None, watt, patt))
    assert one["token_loss"].item() == pytest.approx(both["token_word_loss"].item(), rel=1e-12)
    assert "token_patch_loss" not in one


def test_learned_attention_trains_its_maps() -> None:
    loss = build_loss({"terms": {"token": {"attention": "learned", "num_heads": 1}}}, embed_dim=3).double()
    words, patches, wmask, watt, patt = random_case()
    loss(*outputs(words, patches, wmask, None, watt, patt))["loss"].backward()
    grads = {n: p.grad for n, p in loss.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_gradients_reach_local_embeddings() -> None:
    words, patches, wmask, watt, patt = random_case()
    words.requires_grad_(True)
    patches.requires_grad_(True)
    term()(*outputs(words, patches, wmask, None, watt, patt))["loss"].backward()
    assert torch.isfinite(words.grad).all() and words.grad[wmask].abs().sum() > 0
    assert words.grad[~wmask].abs().sum() == 0  # padding words get no gradient
    assert patches.grad.abs().sum() > 0


def test_errors() -> None:
    words, patches, wmask, watt, patt = random_case()
    with pytest.raises(LossInputError, match=r"text\.local_mask"):
        term()(*outputs(words, patches, torch.zeros_like(wmask), None, watt, patt))
    with pytest.raises(LossInputError, match=r"image\.local_embeds"):
        term()(*outputs(words, patches[..., :2], wmask, None, watt, patt))
    with pytest.raises(LossInputError, match=r"image\.attention"):
        term()(*outputs(words, patches, wmask, None, watt, patt[:, :2]))
    with pytest.raises(ConfigError) as info:
        build_loss({"terms": {"token": {"attention": "learned", "num_heads": 2}}}, embed_dim=3)
    assert info.value.field == "loss.terms.token.num_heads"
    with pytest.raises(ConfigError) as info:
        build_loss({"terms": {"token": {"attention": "cross"}}})
    assert info.value.field == "loss.terms.token.attention"
    with pytest.raises(ConfigError) as info:
        build_loss({"terms": {"token": {"weight_clip_quantiles": [0.9, 0.1]}}})
    assert info.value.field == "loss.terms.token.weight_clip_quantiles"

"""MGCA prototype term: Sinkhorn-Knopp codes, swapped prediction, normalising and freezing."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.errors import ConfigError
from medvl.losses import build_loss
from medvl.losses.prototype import PrototypeConfig, PrototypeLoss, sinkhorn_knopp
from medvl.models.outputs import EncoderOutput

F64 = torch.float64


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_term(protos, **cfg) -> PrototypeLoss:
    protos = torch.as_tensor(protos, dtype=F64)
    term = PrototypeLoss(PrototypeConfig(num_prototypes=protos.shape[0], embed_dim=protos.shape[1], **cfg)).double()
    with torch.no_grad():
        term.prototypes.copy_(protos)
    return term


def pair(v, t):
    return EncoderOutput(torch.as_tensor(v, dtype=F64)), EncoderOutput(torch.as_tensor(t, dtype=F64))


def test_symmetric_case_by_hand() -> None:
    # Images and reports sit on the two prototypes. exp(score / eps) is then
    # [[e^20, 1], [1, e^20]] up to a factor: already balanced, so Sinkhorn returns its
    # row-normalised form, sigmoid(20) on the own prototype. The predictions are
    # softmax(score / 0.2): sigmoid(5) on the own prototype.
    term = make_term([[1.0, 0.0], [0.0, 1.0]], temperature=0.2, epsilon=0.05)
    out = term(*pair([[1.0, 0.0], [0.0, 3.0]], [[2.0, 0.0], [0.0, 1.0]]), epoch=1)
    q, p = sig(20.0), sig(5.0)
    expected = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    assert out["prototype_loss"].item() == pytest.approx(expected, rel=1e-9)


def scalar_sinkhorn(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """SwAV's algorithm written out: rows are prototypes, columns samples."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / eps) for i in range(b)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        q = [[x / (sum(row) * k) for x in row] for row in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / (cols[i] * b) for i in range(b)] for j in range(k)]
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def test_sinkhorn_matches_written_out_algorithm() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=F64), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=F64), dim=1).T
    got = sinkhorn_knopp(s, 0.3, 3)
    ref = scalar_sinkhorn(s.tolist(), 0.3, 3)
    assert torch.allclose(got, torch.tensor(ref, dtype=F64), rtol=1e-10, atol=1e-12)


def test_sinkhorn_converges_to_equipartitioned_scaling() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.rand(6, 3, generator=g, dtype=F64) * 2 - 1
    q = sinkhorn_knopp(s, 0.5, 500)
    assert torch.allclose(q.sum(dim=1), torch.ones(6, dtype=F64))
    assert torch.allclose(q.sum(dim=0), torch.full((3,), 2.0, dtype=F64), atol=1e-8)  # B / K each
    # The solution has the form diag(a) exp(s / eps) diag(b): log q - s / eps is a sum
    # of a row and a column term, so its double-centred residual vanishes.
    r = q.log() - s / 0.5
    resid = r - r.mean(0, keepdim=True) - r.mean(1, keepdim=True) + r.mean()
    assert resid.abs().max() < 1e-8


def test_prototypes_normalised_in_training_and_untouched_in_eval() -> None:
    term = make_term([[3.0, 4.0], [0.0, -2.0], [1.0, 1.0]])
    v, t = pair([[1.0, 0.2], [0.3, 1.0]], [[0.9, 0.1], [0.0, 1.0]])
    term.eval()
    before = term.prototypes.detach().clone()
    eval_loss = term(v, t, epoch=1)["prototype_loss"].item()
    assert torch.equal(term.prototypes.detach(), before)
    term.train()
    train_loss = term(v, t, epoch=1)["prototype_loss"].item()
    assert torch.allclose(term.prototypes.norm(dim=1), torch.ones(3, dtype=F64))
    assert train_loss == pytest.approx(eval_loss, rel=1e-12)


def test_prototypes_frozen_in_first_epochs_only() -> None:
    term = make_term([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], freeze_epochs=1)
    v = torch.tensor([[1.0, 0.2], [0.3, 1.0]], dtype=F64, requires_grad=True)
    t = torch.tensor([[0.9, 0.1], [0.0, 1.0]], dtype=F64, requires_grad=True)
    term(EncoderOutput(v), EncoderOutput(t), epoch=0)["prototype_loss"].backward()
    assert term.prototypes.grad is None
    assert v.grad is not None and v.grad.abs().sum() > 0  # the encoders still learn
    term(EncoderOutput(v), EncoderOutput(t), epoch=1)["prototype_loss"].backward()
    assert term.prototypes.grad is not None and term.prototypes.grad.abs().sum() > 0


def test_invariances() -> None:
    g = torch.Generator().manual_seed(4)
    term = make_term(torch.randn(7, 4, generator=g, dtype=F64), epsilon=0.1)
    v = torch.randn(6, 4, generator=g, dtype=F64)
    t = torch.randn(6, 4, generator=g, dtype=F64)
    ref = term(*pair(v, t), epoch=1)["prototype_loss"].item()
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert term(*pair(v[perm], t[perm]), epoch=1)["prototype_loss"].item() == pytest.approx(ref, rel=1e-12)
    assert term(*pair(v * 4.0, t * 0.3), epoch=1)["prototype_loss"].item() == pytest.approx(ref, rel=1e-9)


def test_half_precision_codes_stay_finite() -> None:
    s = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.bfloat16)
    q = sinkhorn_knopp(s, 0.05, 3)
    assert torch.isfinite(q).all() and q.dtype == torch.float32


def test_build_fills_embed_dim_and_errors_name_keys() -> None:
    loss = build_loss({"terms": {"prototype": {"num_prototypes": 5}}}, embed_dim=3)
    assert loss.terms["prototype"].prototypes.shape == (5, 3)
    with pytest.raises(ConfigError) as info:
        build_loss({"terms": {"prototype": {}}})
    assert info.value.field == "loss.terms.prototype.embed_dim"
    with pytest.raises(ConfigError) as info:
        build_loss({"terms": {"prototype": {"epsilon": 0}}}, embed_dim=3)
    assert info.value.field == "loss.terms.prototype.epsilon"

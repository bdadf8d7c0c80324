"""The combined loss: weighted total, registry, resolved config, precision and 3D inputs."""

from __future__ import annotations

import pytest
import torch

from medvl.losses import LOSS_TERMS, build_loss
from medvl.models.outputs import EncoderOutput

ALL = {
    "instance": {"weight": 1.0, "soft_targets": True},
    "token": {"weight": 0.7, "attention": "learned", "num_heads": 2},
    "gloria": {"weight": 0.3},
    "prototype": {"weight": 0.5, "num_prototypes": 10},
}


def batch(dtype=torch.float32, grid=(2, 3), b=4, t=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in grid:
        n *= s
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 3:] = False
    image = EncoderOutput(torch.randn(b, d, generator=g).to(dtype), torch.randn(b, n, d, generator=g).to(dtype),
                          None, grid, torch.rand(b, n, generator=g).to(dtype))
    text = EncoderOutput(torch.randn(b, d, generator=g).to(dtype), torch.randn(b, t, d, generator=g).to(dtype),
                         mask, None, (torch.rand(b, t, generator=g) * mask).to(dtype))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [float("nan"), 1.0], [1.0, -1.0]])
    return image, text, labels


def test_registry_names() -> None:
    assert LOSS_TERMS.names() == ["filip", "gloria", "instance", "prototype", "token"]


def test_total_is_weighted_sum_of_reported_terms() -> None:
    torch.manual_seed(0)
    loss = build_loss({"terms": ALL}, embed_dim=8)
    image, text, labels = batch()
    out = loss(image, text, logit_scale=torch.tensor(2.0), labels=labels, epoch=1)
    expected = sum(cfg["weight"] * out[f"{name}_loss"] for name, cfg in ALL.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.config.terms["token"]["embed_dim"] == 8  # resolved config records the fill-in
    assert loss.config.terms["gloria"]["similarity_scale"] == 10.0


@pytest.mark.parametrize("grid", [(2, 3), (2, 2, 2), (7,)])  # 2D patches, 3D patches, slices
def test_half_precision_close_to_float32(grid: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    loss = build_loss({"terms": ALL}, embed_dim=8)
    ref_in = batch(grid=grid)
    ref = loss(*ref_in[:2], logit_scale=torch.tensor(2.0), labels=ref_in[2], epoch=1)
    for dtype in (torch.bfloat16, torch.float16):
        image, text, labels = batch(dtype, grid=grid)
        image.embeds.requires_grad_(True)
        out = loss(image, text, logit_scale=torch.tensor(2.0), labels=labels, epoch=1)
        out["loss"].backward()
        assert torch.isfinite(image.embeds.grad.float()).all()
        for name in ALL:
            assert out[f"{name}_loss"].float().item() == pytest.approx(ref[f"{name}_loss"].item(), rel=0.1), name

"""Volume encoders: slice pooling against a per-slice reference, and native 3D."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ModelError
from medvl.models import build_model
from medvl.models.config import ImageConfig
from medvl.models.factory import build_image_encoder


def _slices(pooling: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ImageConfig(name="resnet10", width=8, volume="slices", slice_pooling=pooling, **kw)
    return build_image_encoder(cfg).eval()


def test_mean_and_max_pool_the_per_slice_features():
    vol = torch.randn(2, 1, 7, 64, 64)
    for pooling, reduce in (("mean", lambda t: t.mean(1)), ("max", lambda t: t.amax(1))):
        enc = _slices(pooling, slice_chunk=3)
        with torch.no_grad():
            f = enc(vol)
            ref = torch.stack([enc.encoder2d(vol[:, :, d]).pooled for d in range(7)], dim=1)
        assert f.grid == (7,)
        assert torch.allclose(f.tokens, ref, atol=1e-5)
        assert torch.allclose(f.pooled, reduce(ref), atol=1e-5)


def test_slab_stacks_neighbouring_slices_as_channels():
    enc = _slices("mean", slab=3, in_channels=2)
    assert enc.encoder2d.in_channels == 6
    vol = torch.randn(1, 2, 5, 64, 64)
    with torch.no_grad():
        f = enc(vol)
        # slice 0 sees (0, 0, 1): the edge slice is repeated; channels are (c, neighbour)
        first = torch.stack([vol[:, :, 0], vol[:, :, 0], vol[:, :, 1]], dim=2).reshape(1, 6, 64, 64)
        mid = vol[:, :, 1:4].reshape(1, 6, 64, 64)
        assert torch.allclose(f.tokens[:, 0], enc.encoder2d(first).pooled, atol=1e-5)
        assert torch.allclose(f.tokens[:, 2], enc.encoder2d(mid).pooled, atol=1e-5)


@pytest.mark.parametrize("pooling", ["attention", "mha"])
def test_attention_pooling_weights(pooling):
    enc = _slices(pooling, slice_chunk=4)
    with torch.no_grad():
        f = enc(torch.randn(2, 1, 9, 64, 64))
    assert f.attention.shape == (2, 9)
    assert torch.allclose(f.attention.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(f.pooled, torch.einsum("bn,bnc->bc", f.attention, f.tokens), atol=1e-5)


def test_chunking_does_not_change_values_or_gradients():
    vol = torch.randn(1, 1, 6, 64, 64)
    grads = []
    outs = []
    for chunk in (2, 64):  # 2 -> three checkpointed chunks; 64 -> one plain pass
        enc = _slices("attention", slice_chunk=chunk)
        for m in enc.modules():  # BatchNorm in eval: recomputation must not drift
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        f = enc(vol)
        f.pooled.square().sum().backward()
        outs.append(f.pooled.detach())
        grads.append(enc.encoder2d.net.conv1.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)


def test_checkpointed_chunks_update_batchnorm_statistics_once():
    vol = torch.randn(1, 1, 6, 64, 64)
    stats = []
    for chunk in (2, 64):
        enc = _slices("mean", slice_chunk=chunk).train()
        enc(vol).pooled.sum().backward()
        bn = enc.encoder2d.net.bn1
        stats.append((bn.running_mean.clone(), int(bn.num_batches_tracked)))
    # three chunks update three times (once each), never again in the recomputation
    assert stats[0][1] == 3 and stats[1][1] == 1
    one_chunk = _slices("mean", slice_chunk=2).train()
    with torch.no_grad():
        one_chunk(vol)  # forward only: the same three updates, no recomputation
    assert torch.allclose(one_chunk.encoder2d.net.bn1.running_mean, stats[0][0], atol=1e-6)


def test_native_3d_encoders_return_3d_patch_tokens():
    torch.manual_seed(0)
    enc = build_image_encoder(ImageConfig(name="resnet10-3d", width=8, volume="native")).eval()
    with torch.no_grad():
        f = enc(torch.randn(1, 1, 64, 64, 32))
    assert f.grid == (2, 2, 1) and f.tokens.shape == (1, 4, 64)
    vit = build_image_encoder(ImageConfig(
        name="vit-3d", width=16, depth=1, image_size=32, patch_size=16, volume="native",
        options={"num_heads": 2, "image_depth": 16},
    )).eval()
    with torch.no_grad():
        f = vit(torch.randn(1, 1, 16, 32, 32))
    assert f.grid == (1, 2, 2) and f.tokens.shape == (1, 4, 16)


def test_volume_model_end_to_end_and_bad_input(tiny_cfg):
    tiny_cfg["image"].update(volume="slices", slice_pooling="mha", slice_chunk=4)
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        out = model.encode_image(torch.randn(2, 1, 5, 64, 64))
    assert out.grid == (5,) and out.local_embeds.shape == (2, 5, 16)
    assert out.local_mask.all()
    with pytest.raises(ModelError, match="encodes volumes"):
        model.encode_image(torch.randn(2, 1, 64, 64))
    with pytest.raises(ModelError, match="got 3 channels"):
        model.encode_image(torch.randn(2, 3, 5, 64, 64))

"""Volume encoders: slice pooling over a 2D encoder (RadCLIP-style) and native 3D networks.

Slice pooling applies a 2D encoder to every slice of ``(B, C, D, H, W)`` (or to a
slab of ``slab`` adjacent slices stacked as channels), in chunks of ``slice_chunk``
slices so a 512x512x300 CT fits in a few GB, and pools the per-slice features:

* ``mean`` / ``max`` over slices;
* ``attention``: a learned query scores each slice (softmax), the weights are
  returned as ``attention`` for heatmaps and token losses;
* ``mha``: slice position embeddings plus one self-attention layer let slices see
  each other before the learned-query pooling.

The local tokens are the per-slice features (grid ``(n_slices,)``), so token-level
losses work for volumes as for radiographs. Native 3D encoders are MONAI's 3D ResNet
and ViT, whose tokens are 3D patches (grid ``(d, h, w)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medvl.errors import ModelError
from medvl.models.config import ImageConfig
from medvl.models.image_base import ImageEncoder, ImageFeatures


@contextlib.contextmanager
def _keep_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Freeze BatchNorm running statistics while a checkpointed chunk is recomputed.

    The backward-pass recomputation runs the same batch through BatchNorm again; with
    momentum 0 it leaves ``running_mean``/``running_var`` as the forward pass left
    them (the batch statistics used for normalisation are unchanged).
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class QueryPool(nn.Module):
    """Attention pooling with one learned query: ``softmax(q . k_i / sqrt(d))`` over tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, C)`` -> pooled ``(B, C)`` and weights ``(B, N)``."""
        scores = self.key(tokens) @ self.query / math.sqrt(tokens.shape[-1])  # (B, N)
        weights = scores.softmax(dim=-1)
        return torch.einsum("bn,bnc->bc", weights, tokens), weights


class SlicePoolingEncoder(ImageEncoder):
    """Encode a volume slice by slice with a 2D encoder and pool over slices.

    Args:
        encoder2d: the per-slice encoder, built with ``in_channels * slab`` channels.
        cfg: the image section (``in_channels`` counts the volume's channels, e.g.
            CT windows; ``slab``, ``slice_chunk``, ``slice_pooling``, ``max_slices``).
    """

    spatial_dims = 3

    def __init__(self, encoder2d: ImageEncoder, cfg: ImageConfig) -> None:
        super().__init__()
        self.encoder2d = encoder2d
        self.in_channels = cfg.in_channels
        self.out_dim = encoder2d.out_dim
        self.min_size = 1  # any number of slices; the slice size is checked below
        self._slice_min = encoder2d.min_size
        self.fixed_size = None
        self._fixed_hw = encoder2d.fixed_size
        self.slab = cfg.slab
        self.chunk = cfg.slice_chunk
        self.pooling = cfg.slice_pooling
        dim = encoder2d.out_dim
        if self.pooling in ("attention", "mha"):
            self.pool = QueryPool(dim)
        if self.pooling == "mha":
            # a learned table of max_slices positions, resampled to each volume's depth
            # so the position is relative (first slice .. last slice)
            self.slice_pos = nn.Parameter(torch.zeros(1, dim, cfg.max_slices))
            nn.init.trunc_normal_(self.slice_pos, std=0.02)
            heads = max(h for h in (8, 4, 2, 1) if dim % h == 0)
            self.adapter = nn.TransformerEncoderLayer(
                d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=0.0,
                batch_first=True, norm_first=True,
            )

    def check_input(self, x: torch.Tensor, *, what: str = "image") -> None:
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            raise ModelError(
                f"got a 2D batch of shape {tuple(x.shape)} but this tower encodes volumes",
                field=what, expected="(B, C, D, H, W); use model.image.volume: none for 2D",
            )
        super().check_input(x, what=what)
        if min(x.shape[3:]) < self._slice_min:
            raise ModelError(
                f"slice size {tuple(x.shape[3:])} is smaller than the encoder's stride",
                field=what, expected=f"H and W >= {self._slice_min}",
            )
        if self._fixed_hw is not None and tuple(x.shape[3:]) != self._fixed_hw:
            raise ModelError(
                f"slice size {tuple(x.shape[3:])} does not match the encoder", field=what,
                expected=f"{self._fixed_hw} (model.image.image_size)",
            )

    def _slabs(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Slices ``start:stop`` with their neighbours as channels: ``(B*n, C*slab, H, W)``."""
        b, c, d, h, w = x.shape
        r = self.slab // 2
        idx = torch.arange(start, stop, device=x.device)[:, None] + torch.arange(-r, r + 1, device=x.device)
        idx = idx.clamp(0, d - 1)  # edge slices repeat (replicate padding)
        sl = x[:, :, idx]  # (B, C, n, slab, H, W)
        return sl.permute(0, 2, 1, 3, 4, 5).reshape(b * (stop - start), c * self.slab, h, w)

    def _encode_chunk(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.encoder2d(self._slabs(x, start, stop)).pooled  # (B*n, C2)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        b, _, d = x.shape[:3]
        use_ckpt = torch.is_grad_enabled() and d > self.chunk and any(
            p.requires_grad for p in self.encoder2d.parameters()
        )
        parts = []
        for start in range(0, d, self.chunk):
            stop = min(start + self.chunk, d)
            if use_ckpt:
                # recompute each chunk in backward: activation memory of one chunk,
                # not of the whole volume
                feat = checkpoint(
                    self._encode_chunk, x, start, stop, use_reentrant=False,
                    context_fn=lambda: (contextlib.nullcontext(),
                                        _keep_norm_statistics(self.encoder2d)),
                )
            else:
                feat = self._encode_chunk(x, start, stop)
            parts.append(feat.view(b, stop - start, -1))
        tokens = torch.cat(parts, dim=1)  # (B, D, C2)
        attention = None
        if self.pooling == "mean":
            pooled = tokens.mean(1)
        elif self.pooling == "max":
            pooled = tokens.amax(1)
        else:
            if self.pooling == "mha":
                pos = F.interpolate(self.slice_pos, size=d, mode="linear", align_corners=True)
                tokens = self.adapter(tokens + pos.transpose(1, 2))
            pooled, attention = self.pool(tokens)
        return ImageFeatures(pooled=pooled, tokens=tokens, grid=(d,), attention=attention)


def slice_encoder_config(cfg: ImageConfig) -> ImageConfig:
    """The 2D encoder's config for slice pooling: ``slab`` neighbours become channels."""
    return dataclasses.replace(cfg, in_channels=cfg.in_channels * cfg.slab, volume="none",
                               pretrained=cfg.pretrained)

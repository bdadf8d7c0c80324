"""Typed outputs shared by every tower, loss, evaluator and the viewer.

Both ``MedVLModel.encode_image`` and ``MedVLModel.encode_text`` return an
:class:`EncoderOutput`, so token-level losses and heatmaps treat radiographs,
volumes and reports the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncoderOutput:
    """Embeddings of one batch from one tower.

    Attributes:
        embeds: global embeddings after the projection head, ``(B, D)``, not normalised.
        local_embeds: local embeddings after the local projection, ``(B, N, D)``:
            patch tokens for images (row-major over ``grid``), slice or 3D-patch tokens
            for volumes, word tokens (word pieces merged) for text.
        local_mask: ``(B, N)`` bool, True where a local token is real (not padding).
        grid: spatial shape of the local tokens for images: ``(h, w)`` for 2D,
            ``(d, h, w)`` for native 3D, ``(n_slices,)`` for slice pooling; ``None`` for text.
        attention: ``(B, N)`` weights of each local token in the global embedding
            (the [CLS] attention for transformers, pooling attention for slice pooling),
            used by MGCA's token loss; ``None`` when the tower has no such notion.
        words: for text, the words the local tokens stand for, one list per sample.
    """

    embeds: torch.Tensor
    local_embeds: torch.Tensor | None = None
    local_mask: torch.Tensor | None = None
    grid: tuple[int, ...] | None = None
    attention: torch.Tensor | None = None
    words: list[list[str]] | None = None

"""Input checks and small tensor helpers shared by the alignment terms.

Every term receives two :class:`~medvl.models.outputs.EncoderOutput` objects. The
checks here turn a shape mistake made by a tower into one clear
:class:`LossInputError` naming the field (``image.local_embeds``) and the shape that
was expected, instead of a broadcasting error deep inside ``torch.bmm``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from medvl.errors import LossInputError
from medvl.models.outputs import EncoderOutput


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def check_global(image: EncoderOutput, text: EncoderOutput) -> tuple[int, int]:
    """Check the global embeddings of a batch of pairs.

    Returns:
        ``(batch_size, embed_dim)``.

    Raises:
        LossInputError: embeddings missing, not 2-D, or not matching between towers.
    """
    for name, out in (("image", image), ("text", text)):
        if out.embeds is None or out.embeds.dim() != 2:
            raise LossInputError(
                f"global embeddings have shape {_shape(out.embeds)}",
                field=f"{name}.embeds", expected="(B, D)",
            )
    if image.embeds.shape != text.embeds.shape:
        raise LossInputError(
            f"image embeds {_shape(image.embeds)} and text embeds {_shape(text.embeds)} differ",
            field="text.embeds", expected=f"the same (B, D) as image.embeds {_shape(image.embeds)}",
        )
    return int(image.embeds.shape[0]), int(image.embeds.shape[1])


def check_labels(labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Check that ``labels`` is ``None`` or a float ``(B, K)`` tensor for this batch."""
    if labels is None:
        return None
    if labels.dim() != 2 or labels.shape[0] != batch or not labels.is_floating_point():
        raise LossInputError(
            f"labels have shape {_shape(labels)} and dtype {labels.dtype}",
            field="labels", expected=f"float (B={batch}, K) with 1, 0, -1 or NaN",
        )
    return labels


def local_tokens(
    out: EncoderOutput, name: str, batch: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(local_embeds, local_mask, attention)`` of one tower, checked.

    A missing mask means every token is real. Samples must keep at least one real
    token, since a token loss of an empty report or image is undefined.

    Raises:
        LossInputError: local embeddings missing or of the wrong shape, a mask or
            attention that does not match them, or a sample with no real token.
    """
    local = out.local_embeds
    if local is None or local.dim() != 3 or local.shape[0] != batch or local.shape[2] != dim:
        raise LossInputError(
            f"local embeddings have shape {_shape(local)}",
            field=f"{name}.local_embeds", expected=f"(B={batch}, N, D={dim})",
        )
    n = local.shape[1]
    mask = out.local_mask
    if mask is None:
        mask = torch.ones(batch, n, dtype=torch.bool, device=local.device)
    elif mask.shape != (batch, n):
        raise LossInputError(
            f"local mask has shape {_shape(mask)}",
            field=f"{name}.local_mask", expected=f"bool (B={batch}, N={n})",
        )
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        bad = int((~mask.any(dim=1)).nonzero()[0, 0])
        raise LossInputError(
            f"sample {bad} has no valid local token",
            field=f"{name}.local_mask", expected="at least one True per sample",
        )
    att = out.attention
    if att is not None and att.shape != (batch, n):
        raise LossInputError(
            f"attention has shape {_shape(att)}",
            field=f"{name}.attention", expected=f"(B={batch}, N={n}) or None",
        )
    return local, mask, att


def token_weights(
    attention: torch.Tensor | None,
    mask: torch.Tensor,
    clip_quantiles: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
    clip_over: Literal["valid", "nonzero"] = "valid",
) -> torch.Tensor:
    """Per-token loss weights that sum to one over the valid tokens of each sample.

    Args:
        attention: ``(B, N)`` attention of each token in the global embedding, or
            ``None`` for uniform weights over valid tokens.
        mask: ``(B, N)`` bool, True for real tokens.
        clip_quantiles: ``(low, high)``: clip each sample's weights of valid tokens
            to these quantiles of themselves before normalising (MGCA's code uses
            ``(0.1, 0.9)``, so a few dominant tokens cannot take all the weight).
        dtype: dtype of the result (that of the embeddings the weights multiply).
        clip_over: which tokens the quantiles are taken over and clipped:
            ``"valid"`` = every real token (a real token with zero attention is raised
            to the low quantile); ``"nonzero"`` = real tokens with non-zero attention
            only, the others keep weight 0 (MGCA's code, which selects
            ``attention.nonzero()``).

    Returns:
        ``(B, N)`` float weights, zero on padding, detached (weights are not trained).
    """
    out_dtype = dtype
    if dtype in (torch.float16, torch.bfloat16):  # quantiles need float32 or float64
        dtype = torch.float32
    if attention is None:
        w = mask.to(dtype)
    else:
        w = attention.detach().to(dtype).clamp_min(0.0) * mask
        if clip_quantiles is not None and w.shape[0] > 0:  # an empty rank has nothing to clip
            clip = mask & (w > 0) if clip_over == "nonzero" else mask
            # NaN marks the tokens left out so nanquantile sees only the clipped ones of each row.
            masked = w.masked_fill(~clip, float("nan"))
            q = torch.tensor(clip_quantiles, dtype=w.dtype, device=w.device)
            bounds = torch.nanquantile(masked, q, dim=1)  # (2, B); NaN for a row with nothing to clip
            clipped = torch.maximum(torch.minimum(w, bounds[1, :, None]), bounds[0, :, None])
            w = torch.where(clip, clipped, w) * mask
        # A row of all-zero attention (possible after clamping) falls back to uniform.
        dead = w.sum(dim=1, keepdim=True) <= 0
        w = torch.where(dead, mask.to(dtype), w)
    return (w / w.sum(dim=1, keepdim=True)).to(out_dtype)


def masked_fill_min(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace entries where ``keep`` is False with the dtype's lowest value.

    Used before a softmax; unlike ``-inf`` it cannot produce NaN when a whole row is
    masked, and its probability underflows to exactly zero otherwise.
    """
    return x.masked_fill(~keep, torch.finfo(x.dtype).min)


def l2n(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last axis (``F.normalize`` with its default eps)."""
    return F.normalize(x, dim=-1)

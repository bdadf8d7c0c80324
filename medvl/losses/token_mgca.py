"""MGCA's cross-attention-based token alignment (CTA), word-to-patch and patch-to-word.

For one image-report pair with L2-normalised words ``w_1..w_T`` and patches
``p_1..p_N`` (2D patches, 3D patches or slices alike), each word gets a visual
context by attending over the patches,

    c_r = normalise( sum_j softmax_j(<w_r, p_j> / attention_temperature) p_j ),

and is contrasted with the contexts of the *other words of the same report*:

    l_r = - 1/2 [ log softmax_k(<w_r, c_k> / temperature)[r]
                + log softmax_k(<c_r, w_k> / temperature)[r] ].

The word loss is the sum over words of ``weight_r * l_r`` with weights from the
text tower's [CLS] attention (clipped to quantiles, then normalised to sum to 1).
The patch loss is the same with roles swapped (each patch attends over the words,
weights from the image tower's attention or uniform). ``token_loss`` = word loss +
patch loss, averaged over the batch. Negatives never leave the pair, so the term
needs no cross-rank gather. Paper-vs-code differences: ``docs/losses.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.losses import distributed as D
from medvl.losses.base import AlignmentTerm
from medvl.losses.common import (
    check_global,
    l2n,
    local_tokens,
    masked_fill_min,
    token_weights,
)
from medvl.models.outputs import EncoderOutput


@dataclass
class TokenConfig:
    """Settings of MGCA's token term (``loss.terms.token``).

    Attributes:
        weight: weight of ``token_loss`` in the total; 0 switches the term off.
        temperature: temperature of the token-level InfoNCE (MGCA: 0.1).
        attention: how a token gathers its context from the other modality:
            ``"dot"`` = parameter-free softmax of cosine similarities divided by
            ``attention_temperature`` (MGCA's released default); ``"learned"`` =
            single- or multi-head attention with learned query/key/value maps (the
            paper's formulation, MGCA's ``use_local_atten``).
        attention_temperature: temperature of the ``"dot"`` attention (MGCA: 0.1).
        num_heads: heads of the ``"learned"`` attention.
        embed_dim: embedding size, needed by ``"learned"`` attention; filled from
            the model by :func:`~medvl.losses.build_loss`.
        bidirectional: add the patch-to-word half (MGCA's ``bidirectional``).
        normalize_patch_context: L2-normalise the context a patch gathers from the
            words. The paper uses cosine similarity throughout and MGCA's code does
            this for CNN towers, but not for ViT towers; ``false`` reproduces the
            latter.
        weight_clip_quantiles: clip token weights to these quantiles of each
            sample's valid tokens before normalising (MGCA's code: 0.1 and 0.9);
            ``null`` uses the raw attention.
        word_weights: ``"attention"`` = the text tower's [CLS] attention
            (``EncoderOutput.attention``; uniform when the tower gives none), or
            ``"uniform"`` over valid words.
        patch_weights: the same for image tokens (MGCA's code: the ViT's [CLS]
            attention, uniform for CNN towers).
        weight_clip_over: which tokens the quantile clip looks at: ``"valid"`` =
            every real token (a zero-attention word is raised to the low quantile);
            ``"nonzero"`` = only tokens with non-zero attention, the others keep
            weight 0 (MGCA's code). The two differ only when a real token's
            attention is exactly 0.
        mask_padded_negatives: in the word-to-patch half, drop padded word positions
            from the softmax over the report's words (``true``, medvl's default: a
            loss that does not depend on how far a batch is padded). ``false`` keeps
            them as negatives, as MGCA's code does (its padded words still get a
            visual context and sit in both softmaxes; their own weight is 0). The
            patch-to-word half never attends to padding in either setting.
    """

    SECTION: ClassVar[str] = "loss.terms.token"

    weight: float = 1.0
    temperature: float = 0.1
    attention: Literal["dot", "learned"] = "dot"
    attention_temperature: float = 0.1
    num_heads: int = 1
    embed_dim: int | None = None
    bidirectional: bool = True
    normalize_patch_context: bool = True
    weight_clip_quantiles: tuple[float, float] | None = (0.1, 0.9)
    word_weights: Literal["attention", "uniform"] = "attention"
    patch_weights: Literal["attention", "uniform"] = "attention"
    weight_clip_over: Literal["valid", "nonzero"] = "valid"
    mask_padded_negatives: bool = True

    def validate(self) -> None:
        """Reject values outside their meaningful range."""
        s = self.SECTION
        if self.weight < 0:
            raise ConfigError("weight must be >= 0", field=f"{s}.weight", expected=">= 0")
        for name in ("temperature", "attention_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", field=f"{s}.{name}", expected="> 0")
        q = self.weight_clip_quantiles
        if q is not None and (len(q) != 2 or not 0 <= q[0] <= q[1] <= 1):
            raise ConfigError("weight_clip_quantiles must be [low, high] within [0, 1]",
                              field=f"{s}.weight_clip_quantiles", expected="e.g. [0.1, 0.9] or null")
        if self.attention == "learned":
            if self.embed_dim is None or self.embed_dim <= 0:
                raise ConfigError("learned attention needs the embedding size",
                                  field=f"{s}.embed_dim",
                                  expected="a positive int (build_loss fills it from the model)")
            if self.num_heads <= 0 or self.embed_dim % self.num_heads:
                raise ConfigError("num_heads must divide embed_dim", field=f"{s}.num_heads",
                                  expected=f"a divisor of {self.embed_dim}")


def paired_token_nce(
    tokens: torch.Tensor,
    context: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    *,
    mask_negatives: bool = True,
) -> torch.Tensor:
    """Weighted two-way InfoNCE between tokens and their contexts, within each sample.

    Args:
        tokens: ``(B, R, D)`` normalised tokens.
        context: ``(B, R, D)`` the context each token gathered from the other modality.
        valid: ``(B, R)`` bool; padding tokens are never queries (their weight is 0)
            and, with ``mask_negatives``, not negatives either.
        weights: ``(B, R)`` token weights summing to 1 per sample (0 on padding).
        temperature: softmax temperature.
        mask_negatives: leave padding out of both softmaxes; ``False`` keeps padded
            positions as negatives (MGCA's code, word half).

    Returns:
        ``(B,)``: ``sum_r weights_r * (ce_token_to_context_r + ce_context_to_token_r) / 2``.
    """
    sim = torch.einsum("brd,bkd->brk", tokens, context) / temperature  # (B, R, R)
    eye = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
    # A padding row keeps its own column so its (zero-weighted) CE stays finite.
    keep = valid[:, None, :] | eye if mask_negatives else torch.ones_like(sim, dtype=torch.bool)
    to_context = -torch.diagonal(F.log_softmax(masked_fill_min(sim, keep), dim=2), dim1=1, dim2=2)
    to_token = -torch.diagonal(
        F.log_softmax(masked_fill_min(sim.transpose(1, 2), keep), dim=2), dim1=1, dim2=2
    )
    return ((to_context + to_token) / 2 * weights).sum(dim=1)


class TokenAlignmentLoss(AlignmentTerm):
    """MGCA's bidirectional cross-attention token alignment.

    Args:
        cfg: the term's :class:`TokenConfig`.
    """

    name: ClassVar[str] = "token"

    def __init__(self, cfg: TokenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.attention == "learned":
            self.word_attention = nn.MultiheadAttention(cfg.embed_dim, cfg.num_heads, batch_first=True)
            self.patch_attention = (
                nn.MultiheadAttention(cfg.embed_dim, cfg.num_heads, batch_first=True)
                if cfg.bidirectional else None
            )

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor, which: str
    ) -> torch.Tensor:
        """Context of every query token from the other modality's tokens, ``(B, Q, D)``."""
        if self.cfg.attention == "learned":
            layer = self.word_attention if which == "word" else self.patch_attention
            assert layer is not None, "built in __init__ for learned attention"
            if query.shape[0] == 0:  # an empty rank: nn.MultiheadAttention cannot reshape 0 rows
                return query.new_zeros(query.shape)
            dt = layer.in_proj_weight.dtype  # half-precision tokens meet float32 maps
            out, _ = layer(query.to(dt), keys.to(dt), keys.to(dt), key_padding_mask=~key_valid,
                           need_weights=False)
            return out.to(query.dtype)
        logits = torch.einsum("bqd,bkd->bqk", query, keys) / self.cfg.attention_temperature
        attn = torch.softmax(masked_fill_min(logits, key_valid[:, None, :]), dim=2)
        return torch.einsum("bqk,bkd->bqd", attn, keys)

    def forward(
        self,
        image: EncoderOutput,
        text: EncoderOutput,
        *,
        logit_scale: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Compute the term.

        Returns:
            ``{"token_loss", "token_word_loss", "token_patch_loss"}``; the word and
            patch halves are detached, for logging.
        """
        b, d = check_global(image, text)
        patches, patch_valid, patch_att = local_tokens(image, "image", b, d)
        words, word_valid, word_att = local_tokens(text, "text", b, d)
        if self.cfg.word_weights == "uniform":
            word_att = None
        if self.cfg.patch_weights == "uniform":
            patch_att = None
        patches, words = l2n(patches), l2n(words)  # (B, N, D), (B, T, D)
        q = self.cfg.weight_clip_quantiles
        q = None if q is None else (float(q[0]), float(q[1]))

        word_ctx = l2n(self.attend(words, patches, patch_valid, "word"))  # (B, T, D)
        over = self.cfg.weight_clip_over
        word_w = token_weights(word_att, word_valid, q, words.dtype, clip_over=over)
        per_sample = paired_token_nce(words, word_ctx, word_valid, word_w, self.cfg.temperature,
                                      mask_negatives=self.cfg.mask_padded_negatives)
        word_loss = D.batch_mean(per_sample)
        out = {"token_word_loss": word_loss.detach()}
        loss = word_loss
        if self.cfg.bidirectional:
            patch_ctx = self.attend(patches, words, word_valid, "patch")  # (B, N, D)
            if self.cfg.normalize_patch_context:
                patch_ctx = l2n(patch_ctx)
            patch_w = token_weights(patch_att, patch_valid, q, patches.dtype, clip_over=over)
            per_sample = paired_token_nce(patches, patch_ctx, patch_valid, patch_w, self.cfg.temperature)
            patch_loss = D.batch_mean(per_sample)
            out["token_patch_loss"] = patch_loss.detach()
            loss = loss + patch_loss
        out["token_loss"] = loss
        return out

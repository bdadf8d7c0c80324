"""GLoRIA's local attention loss: words attend to image regions, matched across the batch.

For a report with words ``e_1..e_T`` and an image with regions ``v_1..v_N`` (2D
patches, 3D patches or slices), GLoRIA (Huang et al., ICCV 2021) computes

    s_rj   = <e_r, v_j>                                   (word-region similarity)
    s'_rj  = softmax_r(s_rj)                              (over the words, per region)
    a_rj   = softmax_j(attention_scale * s'_rj)           (over the regions, per word)
    c_r    = sum_j a_rj v_j                               (the word's visual context)
    Z      = log sum_r exp(aggregation_scale * cos(c_r, e_r))   [/ aggregation_scale]
    logits = similarity_scale * Z                         for every image-report pair

and a symmetric cross entropy over the batch on these pair scores. Unlike MGCA's token
term the negatives are the other *pairs* of the batch, so the score is computed for
all ``B x B`` pairs at once: memory grows as ``B^2 * T * max(N, D)``. Paper-vs-code
differences and our defaults: ``docs/losses.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from medvl.errors import ConfigError
from medvl.losses import distributed as D
from medvl.losses.base import AlignmentTerm
from medvl.losses.common import check_global, l2n, local_tokens, masked_fill_min
from medvl.models.outputs import EncoderOutput


@dataclass
class GloriaConfig:
    """Settings of GLoRIA's local term (``loss.terms.gloria``).

    Attributes:
        weight: weight of ``gloria_loss`` in the total; 0 switches the term off.
        attention_scale: sharpness of the word-to-region attention (GLoRIA's tau1 = 4).
        aggregation_scale: sharpness of the LogSumExp over words (tau2 = 5).
        similarity_scale: multiplier of the pair scores before the softmax over the
            batch (tau3 = 10, i.e. temperature 0.1, as in GLoRIA's code).
        aggregation: ``"sum"`` = LogSumExp over words (paper, code default);
            ``"mean"`` = log of the mean (the code's other option, independent of
            report length).
        divide_by_aggregation_scale: divide the LogSumExp by ``aggregation_scale``
            as the paper's formula does (``log(sum exp(tau2 R))^(1/tau2)``); GLoRIA's
            code does not.
        normalize_inputs: L2-normalise words and regions before the attention, so the
            term does not depend on the embeddings' scale. Off by default, as in
            GLoRIA's code: on unit vectors the attention is close to uniform over the
            regions (its logits ``attention_scale * softmax_words(cos)`` differ by at
            most ``attention_scale * (max - min)`` of a softmax over ~T words, a few
            tenths; measured on a trained model: mean largest weight 0.0041 over 256
            regions, uniform 0.0039), so each word's "context" is the image mean.
        image_to_text_weight: weight of the image-to-report cross entropy.
        text_to_image_weight: weight of the report-to-image cross entropy (GLoRIA
            sums both directions: 1 and 1).
        gather: under ``torchrun``, score each rank's reports and images against all
            ranks' images and reports (local tokens are gathered with gradients), so
            the loss equals that of one process with the whole batch. Costs
            ``2 b B`` pair scores per rank instead of ``b^2``.
    """

    SECTION: ClassVar[str] = "loss.terms.gloria"

    weight: float = 1.0
    attention_scale: float = 4.0
    aggregation_scale: float = 5.0
    similarity_scale: float = 10.0
    aggregation: Literal["sum", "mean"] = "sum"
    divide_by_aggregation_scale: bool = False
    normalize_inputs: bool = False
    image_to_text_weight: float = 1.0
    text_to_image_weight: float = 1.0
    gather: bool = True

    def validate(self) -> None:
        """Reject values outside their meaningful range."""
        s = self.SECTION
        for name in ("weight", "image_to_text_weight", "text_to_image_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", field=f"{s}.{name}", expected=">= 0")
        for name in ("attention_scale", "aggregation_scale", "similarity_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", field=f"{s}.{name}", expected="> 0")


def gloria_pair_scores(
    words: torch.Tensor,
    word_valid: torch.Tensor,
    regions: torch.Tensor,
    region_valid: torch.Tensor,
    cfg: GloriaConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLoRIA's matching score ``Z`` of every (report, image) pair of the batch.

    Args:
        words: ``(Bt, T, D)`` word embeddings.
        word_valid: ``(Bt, T)`` bool.
        regions: ``(Bi, N, D)`` region embeddings.
        region_valid: ``(Bi, N)`` bool.
        cfg: scales and aggregation.

    Returns:
        ``(scores (Bt, Bi), attention (Bt, Bi, T, N))``: ``scores[t, i]`` is ``Z`` of
        report ``t`` with image ``i`` (before ``similarity_scale``); ``attention`` is
        the word-to-region attention, for heatmaps.
    """
    sim = torch.einsum("atd,bnd->abtn", words, regions)  # (Bt, Bi, T, N)
    over_words = torch.softmax(masked_fill_min(sim, word_valid[:, None, :, None].expand_as(sim)), dim=2)
    logits = cfg.attention_scale * over_words
    if not bool(region_valid.all()):  # only volumes with fewer slices than others need this
        logits = masked_fill_min(logits, region_valid[None, :, None, :].expand_as(sim))
    attn = torch.softmax(logits, dim=3)
    context = torch.einsum("abtn,bnd->abtd", attn, regions)  # (Bt, Bi, T, D)
    # Cosine written out: F.cosine_similarity would broadcast the words to the size of
    # the context and normalise both, which costs more than the attention itself.
    dot = torch.einsum("abtd,atd->abt", context, words)
    norms = torch.linalg.vector_norm(context, dim=-1) * torch.linalg.vector_norm(words, dim=-1)[:, None]
    match = dot / norms.clamp_min(1e-8)  # (Bt, Bi, T)
    scaled = masked_fill_min(cfg.aggregation_scale * match, word_valid[:, None, :].expand_as(match))
    z = torch.logsumexp(scaled, dim=2)  # (Bt, Bi)
    if cfg.aggregation == "mean":
        z = z - torch.log(word_valid.sum(dim=1, keepdim=True).to(z.dtype))
    if cfg.divide_by_aggregation_scale:
        z = z / cfg.aggregation_scale
    return z, attn


class GloriaLocalLoss(AlignmentTerm):
    """GLoRIA's attention-weighted local image-report contrastive loss.

    Args:
        cfg: the term's :class:`GloriaConfig`.
    """

    name: ClassVar[str] = "gloria"

    def __init__(self, cfg: GloriaConfig) -> None:
        super().__init__()
        self.cfg = cfg

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
            ``{"gloria_loss": ...}``.
        """
        b, d = check_global(image, text)
        regions, region_valid, _ = local_tokens(image, "image", b, d)
        words, word_valid, _ = local_tokens(text, "text", b, d)
        if self.cfg.normalize_inputs:
            regions, words = l2n(regions), l2n(words)
        def scores(w: torch.Tensor, wv: torch.Tensor, r: torch.Tensor, rv: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            z, _ = gloria_pair_scores(w, wv, r, rv, self.cfg)
            return z, z  # one score matrix, read per report and per image

        t2i, i2t = D.pair_cross_entropies(words, word_valid, regions, region_valid, scores,
                                          self.cfg.similarity_scale, self.cfg.gather)
        loss = self.cfg.image_to_text_weight * i2t + self.cfg.text_to_image_weight * t2i
        return {"gloria_loss": loss}


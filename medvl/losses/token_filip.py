"""FILIP's token-wise late-interaction loss: each token finds its best match in the other modality.

For a report with words ``w_1..w_T`` and an image with regions ``r_1..r_N`` (unit
vectors), FILIP (Yao et al., ICLR 2022, "Fine-grained interactive language-image
pre-training") scores the pair in each direction by the *maximum* similarity of every
token over the other side's tokens, averaged over the tokens:

    s_text(t, i)  = mean_r [ max_j <w_r, v_j> ]      (each word's best region)
    s_image(i, t) = mean_j [ max_r <w_r, v_j> ]      (each region's best word)

and contrasts every pair with the other pairs of the batch (a cross entropy over
images for each report with ``s_text``, over reports for each image with
``s_image``), like the instance term but on token scores.

Why it is here (docs/ablation.md): MGCA's token term contrasts a word only with the
other words of its own report, which a fixed word-to-place map solves without looking
at the image; GLoRIA's soft word-to-region attention, on unit vectors, is close to
uniform over regions, so its "context" is close to the image mean. Here the negatives
are other images and the hard maximum routes each word's gradient to one region, the
multiple-instance set-up of weakly supervised localisation. Padded words and regions
never take part. Memory grows as ``B^2 * T * N`` (the pair similarities).
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
class FilipConfig:
    """Settings of FILIP's token-wise term (``loss.terms.filip``).

    Attributes:
        weight: weight of ``filip_loss`` in the total; 0 switches the term off.
        temperature: divides the pair scores before the softmax over the batch.
            FILIP shares CLIP's learned temperature; here it is fixed, so the term
            does not move the instance term's ``logit_scale``.
        text_to_image_weight: weight of the report-to-image cross entropy (each word's
            best region; the direction that localises words).
        image_to_text_weight: weight of the image-to-report cross entropy (each
            region's best word). FILIP averages the two: 0.5 and 0.5.
        baseline: ``none`` = FILIP; ``mean`` = each token's best match *minus its
            mean similarity* over the other side's tokens, so only what a token
            matches better than the rest of that image (or report) counts; a feature
            every region of an image shares (the image's global content, which a
            large receptive field spreads into every token) cancels.
        gather: under ``torchrun``, score each rank's reports and images against all
            ranks' images and reports (tokens gathered with gradients), so the loss
            equals that of one process with the whole batch.
    """

    SECTION: ClassVar[str] = "loss.terms.filip"

    weight: float = 1.0
    temperature: float = 0.1
    text_to_image_weight: float = 0.5
    image_to_text_weight: float = 0.5
    baseline: Literal["none", "mean"] = "none"
    gather: bool = True

    def validate(self) -> None:
        """Reject values outside their meaningful range."""
        s = self.SECTION
        for name in ("weight", "text_to_image_weight", "image_to_text_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", field=f"{s}.{name}", expected=">= 0")
        if self.baseline not in ("none", "mean"):
            raise ConfigError(f"baseline {self.baseline!r}", field=f"{s}.baseline", expected="'none' or 'mean'")
        if self.temperature <= 0:
            raise ConfigError("temperature must be positive", field=f"{s}.temperature", expected="> 0")


def _masked_mean(x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only entries where ``keep`` (broadcast) is True."""
    k = keep.to(x.dtype)
    return (x * k).sum(dim=dim) / k.expand_as(x).sum(dim=dim).clamp_min(1)


def filip_pair_scores(
    words: torch.Tensor, word_valid: torch.Tensor, regions: torch.Tensor, region_valid: torch.Tensor,
    baseline: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's two token-wise scores of every (report, image) pair.

    Args:
        words: ``(Bt, T, D)`` unit word embeddings.
        word_valid: ``(Bt, T)`` bool.
        regions: ``(Bi, N, D)`` unit region embeddings.
        region_valid: ``(Bi, N)`` bool.
        baseline: ``mean`` subtracts each token's mean similarity over the other
            side's valid tokens from its best one (:class:`FilipConfig`).

    Returns:
        ``(s_text (Bt, Bi), s_image (Bt, Bi))``: ``s_text[t, i]`` is the mean over
        report ``t``'s words of each word's best cosine over image ``i``'s regions;
        ``s_image[t, i]`` the mean over image ``i``'s regions of each region's best
        cosine over report ``t``'s words.
    """
    sim = torch.einsum("atd,bnd->abtn", words, regions)  # (Bt, Bi, T, N)
    wv = word_valid[:, None, :, None]  # (Bt, 1, T, 1)
    rv = region_valid[None, :, None, :]  # (1, Bi, 1, N)
    best_region = masked_fill_min(sim, rv).amax(dim=3)  # (Bt, Bi, T)
    best_word = masked_fill_min(sim, wv).amax(dim=2)  # (Bt, Bi, N)
    if baseline == "mean":
        best_region = best_region - _masked_mean(sim, rv, 3)
        best_word = best_word - _masked_mean(sim, wv, 2)
    s_text = _masked_mean(best_region, wv[..., 0], 2)
    s_image = _masked_mean(best_word, rv[:, :, 0], 2)
    return s_text, s_image


class FilipLoss(AlignmentTerm):
    """FILIP's token-wise (late-interaction) contrastive loss.

    Args:
        cfg: the term's :class:`FilipConfig`.
    """

    name: ClassVar[str] = "filip"

    def __init__(self, cfg: FilipConfig) -> None:
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
            ``{"filip_loss": ...}``.
        """
        b, d = check_global(image, text)
        regions, region_valid, _ = local_tokens(image, "image", b, d)
        words, word_valid, _ = local_tokens(text, "text", b, d)
        regions, words = l2n(regions), l2n(words)

        def scores(w: torch.Tensor, wv: torch.Tensor, r: torch.Tensor, rv: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            return filip_pair_scores(w, wv, r, rv, self.cfg.baseline)

        t2i, i2t = D.pair_cross_entropies(words, word_valid, regions, region_valid, scores,
                                          1.0 / self.cfg.temperature, self.cfg.gather)
        loss = self.cfg.text_to_image_weight * t2i + self.cfg.image_to_text_weight * i2t
        return {"filip_loss": loss}

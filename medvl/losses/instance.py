"""Instance-level alignment: symmetric InfoNCE between image and report embeddings.

For L2-normalised image embeddings ``v`` and report embeddings ``t`` of ``B`` pairs and
an inverse temperature ``s`` (``logit_scale.exp()`` clamped at ``max_logit_scale``, or
``1 / temperature`` when fixed), the logits are ``s * v @ t.T`` and

    instance_loss = w_i2t * CE(logits, y) + w_t2i * CE(logits.T, y)

with ``y`` the matching pairs (ConVIRT, CLIP). ``w_i2t = w_t2i = 0.5`` is the mean of
the two directions (CLIP), ``1, 1`` their sum (MGCA's and GLoRIA's code), ``0.75,
0.25`` ConVIRT. Optional label smoothing, and optional soft targets from finding
labels (MedCLIP) so that two reports with the same findings are not pushed apart.
Under ``torchrun`` the negatives come from every rank (:mod:`medvl.losses.distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from medvl.errors import ConfigError
from medvl.losses import distributed as D
from medvl.losses.base import AlignmentTerm
from medvl.losses.common import LossInputError, check_global, check_labels, l2n
from medvl.models.outputs import EncoderOutput


@dataclass
class InstanceConfig:
    """Settings of the instance term (``loss.terms.instance``).

    Attributes:
        weight: weight of ``instance_loss`` in the total; 0 switches the term off.
        temperature: fixed softmax temperature; ``None`` uses the model's learnable
            ``logit_scale`` (log of the inverse temperature).
        max_logit_scale: upper clamp of ``exp(logit_scale)`` (CLIP's 100).
        label_smoothing: mass spread uniformly over all candidates, in ``[0, 1)``.
        soft_targets: use finding labels to build soft targets (MedCLIP); needs
            ``labels`` in the forward call, else hard targets are used.
        label_temperature: temperature of the softmax over label similarities that
            makes the soft targets; MedCLIP uses 1. Lower values sharpen the targets.
        uncertain_value: value an uncertain (-1) finding takes in the label vector
            (1 = "U-Ones", 0 = "U-Zeros"). Negative (0) and unmentioned (NaN) count 0.
        image_to_text_weight: weight of the image-to-text cross entropy.
        text_to_image_weight: weight of the text-to-image cross entropy.
        gather: under ``torchrun``, use negatives from all ranks.
        local_loss: with ``gather``, each rank scores only its own rows against all
            columns (open_clip's "local loss": memory O(b * B) instead of O(B^2));
            the mean over ranks is the same loss.
    """

    SECTION: ClassVar[str] = "loss.terms.instance"

    weight: float = 1.0
    temperature: float | None = None
    max_logit_scale: float = 100.0
    label_smoothing: float = 0.0
    soft_targets: bool = False
    label_temperature: float = 1.0
    uncertain_value: float = 0.5
    image_to_text_weight: float = 0.5
    text_to_image_weight: float = 0.5
    gather: bool = True
    local_loss: bool = False

    def validate(self) -> None:
        """Reject values outside their meaningful range."""
        s = self.SECTION
        if self.weight < 0:
            raise ConfigError("weight must be >= 0", field=f"{s}.weight", expected=">= 0")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError("temperature must be positive", field=f"{s}.temperature",
                              expected="> 0 or null for the learnable logit_scale")
        if self.max_logit_scale <= 1:
            raise ConfigError("max_logit_scale must exceed 1", field=f"{s}.max_logit_scale",
                              expected="> 1, e.g. 100")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing out of range", field=f"{s}.label_smoothing",
                              expected="in [0, 1)")
        if self.label_temperature <= 0:
            raise ConfigError("label_temperature must be positive",
                              field=f"{s}.label_temperature", expected="> 0")
        if not 0 <= self.uncertain_value <= 1:
            raise ConfigError("uncertain_value out of range", field=f"{s}.uncertain_value",
                              expected="in [0, 1]")
        for name in ("image_to_text_weight", "text_to_image_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", field=f"{s}.{name}", expected=">= 0")


def label_vectors(labels: torch.Tensor, uncertain_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``(B, K)`` labels (1, 0, -1, NaN) into vectors for label similarity.

    Positive findings count 1, uncertain ones ``uncertain_value``, negative and
    unmentioned ones 0. One column is appended for "no finding" (``1 - max``), so a
    report without any positive finding is a well-defined vector that matches other
    normal reports instead of a zero vector with undefined cosine.

    Returns:
        ``(vectors (B, K + 1), labelled (B,) bool)``; a row whose labels are all NaN is
        not labelled and gets a hard target in :func:`soft_targets`.
    """
    labelled = ~torch.isnan(labels).all(dim=1)
    y = torch.nan_to_num(labels, nan=0.0)
    y = torch.where(y < 0, torch.full_like(y, uncertain_value), y).clamp(0.0, 1.0)
    no_finding = 1.0 - y.max(dim=1, keepdim=True).values if y.shape[1] else torch.ones_like(y[:, :1])
    return torch.cat([y, no_finding], dim=1), labelled


def soft_targets(
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    diag_offset: int,
    *,
    label_temperature: float,
    uncertain_value: float,
) -> torch.Tensor:
    """MedCLIP-style target distributions over candidates from label similarity.

    ``target[i, j] = softmax_j(cos(y_i, y_j) / label_temperature)`` over labelled
    candidates ``j``. A candidate with no labels at all gets target 0 (a plain
    negative); a row with no labels gets the hard target at its own pair.

    Args:
        row_labels: ``(R, K)`` labels of the query rows.
        col_labels: ``(C, K)`` labels of the candidates (all ranks' when gathered).
        diag_offset: column of row 0's own pair (``rank offset`` under local loss).

    Returns:
        ``(R, C)`` rows summing to 1, no gradient.
    """
    with torch.no_grad():
        yr, lr = label_vectors(row_labels, uncertain_value)
        yc, lc = label_vectors(col_labels, uncertain_value)
        sim = l2n(yr) @ l2n(yc).T / label_temperature  # (R, C)
        sim = sim.masked_fill(~lc[None, :], float("-inf"))
        hard = torch.zeros_like(sim)
        rows = torch.arange(sim.shape[0], device=sim.device)
        hard[rows, rows + diag_offset] = 1.0
        # Rows whose own labels are missing may be all -inf in sim; softmax would be NaN.
        soft = torch.softmax(sim.masked_fill(~lr[:, None], 0.0), dim=1)
        return torch.where(lr[:, None], soft, hard)


class InstanceLoss(AlignmentTerm):
    """Symmetric InfoNCE over global embeddings, optionally across ranks.

    Args:
        cfg: the term's :class:`InstanceConfig`.
    """

    name: ClassVar[str] = "instance"

    def __init__(self, cfg: InstanceConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def uses_logit_scale(self) -> bool:
        """True unless a fixed ``temperature`` is configured."""
        return self.cfg.temperature is None

    def scale(self, logit_scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Inverse temperature: ``1 / temperature`` or clamped ``exp(logit_scale)``."""
        if self.cfg.temperature is not None:
            return like.new_tensor(1.0 / self.cfg.temperature)
        if logit_scale is None or logit_scale.numel() != 1:
            raise LossInputError(
                "the instance term needs the model's logit_scale (or a fixed temperature)",
                field="logit_scale", expected="a scalar tensor, or loss.terms.instance.temperature",
            )
        # Clamping the log keeps the gradient at zero above the cap, as CLIP intends.
        return logit_scale.reshape(()).clamp(max=math.log(self.cfg.max_logit_scale)).exp()

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
            ``{"instance_loss": ..., "instance_scale": inverse temperature,
            "instance_accuracy": in-batch top-1 retrieval of the own pair}`` (the last
            two detached, for logging; under ``local_loss`` the accuracy is this
            rank's rows).
        """
        b, _ = check_global(image, text)
        labels = check_labels(labels, b)
        v = l2n(image.embeds)  # (b, D)
        t = l2n(text.embeds)  # (b, D)
        s = self.scale(logit_scale, v)

        if self.cfg.gather and D.is_distributed():
            sizes = D.gather_sizes(b, v.device)
            offset, total = sum(sizes[: D.rank()]), sum(sizes)
            all_v, all_t = D.gather_with_grad(v, sizes), D.gather_with_grad(t, sizes)
            all_labels = None if labels is None else D.gather_with_grad(labels, sizes)
        else:
            offset, total = 0, b
            all_v, all_t, all_labels = v, t, labels

        if self.cfg.local_loss:
            logits_i2t = s * v @ all_t.T  # (b, B)
            logits_t2i = s * t @ all_v.T  # (b, B)
            row_labels, first = labels, offset
            # Each rank reports its share so that the mean over ranks is the global mean.
            denom = total / D.world_size() if self.cfg.gather and D.is_distributed() else b
        else:
            logits_i2t = s * all_v @ all_t.T  # (B, B)
            logits_t2i = logits_i2t.T
            row_labels, first, denom = all_labels, 0, total

        rows = logits_i2t.shape[0]
        if self.cfg.soft_targets and labels is not None:
            assert row_labels is not None and all_labels is not None  # both derive from labels
            target = soft_targets(
                row_labels, all_labels, first,
                label_temperature=self.cfg.label_temperature,
                uncertain_value=self.cfg.uncertain_value,
            ).to(logits_i2t.dtype)
        else:
            target = torch.arange(first, first + rows, device=v.device)
        ls = self.cfg.label_smoothing
        i2t = F.cross_entropy(logits_i2t, target, label_smoothing=ls, reduction="sum") / denom
        t2i = F.cross_entropy(logits_t2i, target, label_smoothing=ls, reduction="sum") / denom
        loss = self.cfg.image_to_text_weight * i2t + self.cfg.text_to_image_weight * t2i
        with torch.no_grad():  # in-batch top-1 retrieval of the own pair, both directions
            own = torch.arange(first, first + rows, device=v.device)
            hits = (logits_i2t.argmax(dim=1) == own).float() + (logits_t2i.argmax(dim=1) == own).float()
            accuracy = hits.mean() / 2 if rows else hits.sum()
        return {"instance_loss": loss, "instance_scale": s.detach(), "instance_accuracy": accuracy}

"""MGCA's cross-modal prototype alignment (CPA), disease-level clustering of pairs.

``K`` learnable prototypes ``C`` (unit rows, re-normalised at every training step)
score the normalised global embeddings: ``u = v C^T`` for images, ``z = t C^T`` for
reports. Soft cluster codes come from the Sinkhorn-Knopp algorithm (SwAV), which
spreads the batch evenly over the prototypes:

    q = sinkhorn(exp(u / epsilon)),   q' = sinkhorn(exp(z / epsilon))   (no gradient)

and each modality predicts the *other* modality's code (swapped prediction):

    prototype_loss = 1/2 [ CE(q, softmax(z / temperature)) + CE(q', softmax(u / temperature)) ]

averaged over the batch. The prototypes get no gradient during the first
``freeze_epochs`` epochs (SwAV, MGCA), so the codes have time to become meaningful.
Under ``torchrun`` the Sinkhorn sums run over all ranks, so codes equal those of one
process with the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.losses import distributed as D
from medvl.losses.base import AlignmentTerm
from medvl.losses.common import LossInputError, check_global, l2n
from medvl.models.outputs import EncoderOutput


@dataclass
class PrototypeConfig:
    """Settings of MGCA's prototype term (``loss.terms.prototype``).

    Attributes:
        weight: weight of ``prototype_loss`` in the total; 0 switches the term off.
        num_prototypes: number of prototypes ``K`` (MGCA: 500).
        embed_dim: embedding size ``D`` of the prototypes; filled from the model by
            :func:`~medvl.losses.build_loss`.
        temperature: temperature of the prototype softmax (MGCA: 0.2).
        epsilon: entropic regularisation of Sinkhorn-Knopp (MGCA, SwAV: 0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (MGCA, SwAV: 3).
        freeze_epochs: epochs (0-based count) during which prototypes get no
            gradient (MGCA: 1, i.e. the first epoch).
        distributed_sinkhorn: under ``torchrun``, normalise codes over all ranks.
    """

    SECTION: ClassVar[str] = "loss.terms.prototype"

    weight: float = 1.0
    num_prototypes: int = 500
    embed_dim: int | None = None
    temperature: float = 0.2
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_epochs: int = 1
    distributed_sinkhorn: bool = True

    def validate(self) -> None:
        """Reject values outside their meaningful range."""
        s = self.SECTION
        if self.weight < 0:
            raise ConfigError("weight must be >= 0", field=f"{s}.weight", expected=">= 0")
        if self.embed_dim is None or self.embed_dim <= 0:
            raise ConfigError("the prototype term needs the embedding size", field=f"{s}.embed_dim",
                              expected="a positive int (build_loss fills it from the model)")
        if self.num_prototypes < 2:
            raise ConfigError("need at least 2 prototypes", field=f"{s}.num_prototypes", expected=">= 2")
        for name in ("temperature", "epsilon"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", field=f"{s}.{name}", expected="> 0")
        if self.sinkhorn_iterations < 1:
            raise ConfigError("need at least one Sinkhorn iteration",
                              field=f"{s}.sinkhorn_iterations", expected=">= 1")
        if self.freeze_epochs < 0:
            raise ConfigError("freeze_epochs must be >= 0", field=f"{s}.freeze_epochs", expected=">= 0")


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int, *, distributed: bool = False) -> torch.Tensor:
    """Equipartitioned soft assignments of samples to prototypes (SwAV's algorithm).

    Starting from ``Q = exp(scores / epsilon)``, alternately rescale prototype rows to
    equal mass ``1/K`` and sample columns to ``1/B``; return each sample's
    distribution over prototypes.

    Args:
        scores: ``(B, K)`` cosine scores of samples against prototypes (at most 1).
        epsilon: entropic regularisation; smaller gives harder codes.
        iterations: number of row-then-column rescalings.
        distributed: sum over all ranks' samples (``B`` is then the global batch).

    Returns:
        ``(B, K)`` codes (float32 or float64), rows summing to 1.
    """
    reduce = D.all_reduce_sum if distributed and D.is_distributed() else (lambda x: x)
    # Half precision would underflow exp(-2 / epsilon); float64 input stays float64.
    s = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    # Cosines are <= 1, so shifting by 1 keeps exp() in (0, 1] without changing Q up
    # to a global factor, which the normalisation removes (a per-sample shift would not).
    q = torch.exp((s - 1.0) / epsilon).T  # (K, B)
    k = q.shape[0]
    n = reduce(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / (reduce(q.sum(dim=1, keepdim=True)) * k)  # every prototype gets mass 1/K
        q = q / (q.sum(dim=0, keepdim=True) * n)  # every sample gets mass 1/B
    return (q / q.sum(dim=0, keepdim=True)).T


class PrototypeLoss(AlignmentTerm):
    """MGCA's cross-modal prototype alignment with learnable, normalised prototypes.

    Args:
        cfg: the term's :class:`PrototypeConfig`.
    """

    name: ClassVar[str] = "prototype"

    def __init__(self, cfg: PrototypeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Uniform on the sphere; re-normalised every training step anyway.
        if cfg.embed_dim is None:
            raise ConfigError("the prototype term needs the embedding size", field=f"{cfg.SECTION}.embed_dim",
                              expected="an integer (build_loss fills it from the model)")
        self.prototypes = nn.Parameter(l2n(torch.randn(cfg.num_prototypes, cfg.embed_dim)))

    def forward(
        self,
        image: EncoderOutput,
        text: EncoderOutput,
        *,
        logit_scale: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Compute the term; in training mode, first re-normalise the prototypes.

        Returns:
            ``{"prototype_loss": ...}``.
        """
        _, d = check_global(image, text)
        if d != self.prototypes.shape[1]:
            raise LossInputError(
                f"embeddings have size {d} but the prototypes {self.prototypes.shape[1]}",
                field=f"{self.cfg.SECTION}.embed_dim", expected=f"{d}, the model's embedding size",
            )
        protos: torch.Tensor
        if self.training:
            # MGCA re-normalises the stored prototypes before every step, so each
            # optimiser update starts from the unit sphere.
            with torch.no_grad():
                self.prototypes.copy_(l2n(self.prototypes))
            protos = self.prototypes
        else:  # evaluation must not change parameters
            protos = l2n(self.prototypes)
        if epoch < self.cfg.freeze_epochs:
            protos = protos.detach()
        # Half-precision embeddings meet float32 prototypes in the wider type.
        dt = torch.promote_types(image.embeds.dtype, protos.dtype)
        protos = protos.to(dt)
        u = l2n(image.embeds.to(dt)) @ protos.T  # (B, K)
        z = l2n(text.embeds.to(dt)) @ protos.T  # (B, K)
        dist = self.cfg.distributed_sinkhorn
        q_img = sinkhorn_knopp(u, self.cfg.epsilon, self.cfg.sinkhorn_iterations, distributed=dist).to(u.dtype)
        q_txt = sinkhorn_knopp(z, self.cfg.epsilon, self.cfg.sinkhorn_iterations, distributed=dist).to(z.dtype)
        log_p_img = F.log_softmax(u / self.cfg.temperature, dim=1)
        log_p_txt = F.log_softmax(z / self.cfg.temperature, dim=1)
        # Image codes are predicted from the report and vice versa.
        per_sample = -((q_img * log_p_txt).sum(dim=1) + (q_txt * log_p_img).sum(dim=1)) / 2
        return {"prototype_loss": D.batch_mean(per_sample)}

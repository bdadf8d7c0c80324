"""The interface every alignment term implements.

All terms (instance, MGCA token, GLoRIA local, FILIP, MGCA prototype) take the two towers'
:class:`~medvl.models.outputs.EncoderOutput` and the same keyword arguments, and
return a dict of named scalar tensors with the term's loss under ``<name>_loss``. The
combiner (:class:`~medvl.losses.combine.AlignmentLoss`) and the training engine rely
on that signature and on the properties declared here, instead of guessing them from a
term's config.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from medvl.models.outputs import EncoderOutput


class AlignmentTerm(nn.Module, abc.ABC):
    """Base class of one alignment term.

    Subclasses set :attr:`name` (the config name, ``loss.terms.<name>``), keep their
    config dataclass in ``self.cfg`` and implement :meth:`forward`. A term that reads
    the model's ``logit_scale`` overrides :attr:`uses_logit_scale`.

    Attributes:
        name: the term's config name; its loss is returned under ``f"{name}_loss"``.
        cfg: the term's own config dataclass.
    """

    name: ClassVar[str]
    cfg: Any

    @property
    def loss_key(self) -> str:
        """Key of the term's (unweighted) loss in the dict :meth:`forward` returns."""
        return f"{self.name}_loss"

    @property
    def uses_logit_scale(self) -> bool:
        """True when :meth:`forward` uses (and so trains) the model's ``logit_scale``.

        When no term of a loss does, ``logit_scale`` gets no gradient: freeze it, or
        run DDP with ``find_unused_parameters=True``. Default: False.
        """
        return False

    @abc.abstractmethod
    def forward(
        self,
        image: EncoderOutput,
        text: EncoderOutput,
        *,
        logit_scale: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Compute the term on one batch of pairs.

        Args:
            image: image tower output (global and, for token terms, local embeddings).
            text: text tower output.
            logit_scale: the model's learnable log inverse temperature (terms that do
                not use it ignore it).
            labels: ``(B, K)`` finding labels (1, 0, -1, NaN), for terms that use them.
            epoch: current epoch, 0-based (the prototype term freezes in early epochs).

        Returns:
            ``{f"{name}_loss": scalar with gradient, ...}`` plus detached diagnostics.
        """

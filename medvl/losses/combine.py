"""The combined alignment loss: named terms from config, weighted and summed.

A ``loss`` config section names its terms and their settings::

    loss:
      terms:
        instance: {weight: 1.0, temperature: null}
        token: {weight: 0.5}               # MGCA word<->patch alignment
        gloria: {weight: 0.0}              # GLoRIA local attention loss
        filip: {weight: 0.0}               # FILIP token-wise max matching
        prototype: {weight: 0.5, num_prototypes: 500}

Each name is looked up in :data:`LOSS_TERMS` (unknown names raise
:class:`~medvl.errors.ConfigError` listing the choices) and its settings are read
into that term's own config dataclass. Terms with weight 0 are not built, so they
cost nothing. Without a ``terms`` key, the instance term alone is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medvl.config import from_dict, to_dict
from medvl.errors import ConfigError
from medvl.losses.base import AlignmentTerm
from medvl.losses.instance import InstanceConfig, InstanceLoss
from medvl.losses.prototype import PrototypeConfig, PrototypeLoss
from medvl.losses.token_filip import FilipConfig, FilipLoss
from medvl.losses.token_gloria import GloriaConfig, GloriaLocalLoss
from medvl.losses.token_mgca import TokenAlignmentLoss, TokenConfig
from medvl.models.outputs import EncoderOutput
from medvl.registry import Registry


@dataclass(frozen=True)
class TermSpec:
    """How to build one term: its config dataclass and the module built from it."""

    config_cls: type[Any]
    build: Callable[[Any], AlignmentTerm]


#: Registered alignment terms by config name.
LOSS_TERMS: Registry[TermSpec] = Registry("loss term")
LOSS_TERMS.add("instance", TermSpec(InstanceConfig, InstanceLoss))
LOSS_TERMS.add("token", TermSpec(TokenConfig, TokenAlignmentLoss))
LOSS_TERMS.add("gloria", TermSpec(GloriaConfig, GloriaLocalLoss))
LOSS_TERMS.add("filip", TermSpec(FilipConfig, FilipLoss))
LOSS_TERMS.add("prototype", TermSpec(PrototypeConfig, PrototypeLoss))


def _default_terms() -> dict[str, Any]:
    return {"instance": {"weight": 1.0}}


@dataclass
class LossConfig:
    """The ``loss`` section.

    Attributes:
        terms: term name -> that term's settings (each has a ``weight``); see
            ``docs/losses.md`` for every term's keys and defaults.
    """

    terms: dict[str, Any] = field(default_factory=_default_terms)


class AlignmentLoss(nn.Module):
    """Weighted sum of alignment terms; the module the training engine calls.

    Holds learnable state of its terms (MGCA's prototypes), so the engine must give
    ``loss.parameters()`` to the optimiser, keep ``loss.state_dict()`` in checkpoints
    and, under DDP, average these gradients across ranks
    (:func:`medvl.losses.distributed.average_gradients`) unless the loss is wrapped in
    DDP together with the model.

    Args:
        terms: term name -> ``(weight, module)``.
        config: the resolved config, kept for logging and checkpoints.
    """

    def __init__(self, terms: Mapping[str, tuple[float, AlignmentTerm]], config: LossConfig | None = None) -> None:
        super().__init__()
        for name, (_, m) in terms.items():
            if not isinstance(m, AlignmentTerm):
                raise TypeError(f"loss term {name!r} is a {type(m).__name__}, not a medvl.losses.AlignmentTerm")
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self.terms = nn.ModuleDict({name: m for name, (_, m) in terms.items()})
        self.config = config

    @property
    def uses_logit_scale(self) -> bool:
        """True when some term trains the model's ``logit_scale`` (as each term declares).

        When False (fixed temperature), ``logit_scale`` gets no gradient; under DDP
        the engine should then freeze it or set ``find_unused_parameters``.
        """
        return any(term.uses_logit_scale for term in self.terms.values())

    def forward(
        self,
        image: EncoderOutput,
        text: EncoderOutput,
        *,
        logit_scale: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Compute every term and the weighted total.

        Args:
            image: image tower output (global and, for token/prototype terms, local).
            text: text tower output.
            logit_scale: the model's learnable log inverse temperature.
            labels: ``(B, K)`` finding labels (1, 0, -1, NaN) for soft targets.
            epoch: current epoch, 0-based (the prototype term freezes in early epochs).

        Returns:
            Each term's unweighted value under ``<term>_loss`` (plus any diagnostics
            the term adds, all detached) and the weighted total under ``loss``.
        """
        out: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, term in self.terms.items():
            values = term(image, text, logit_scale=logit_scale, labels=labels, epoch=epoch)
            out.update(values)
            part = self.weights[name] * values[term.loss_key]
            total = part if total is None else total + part
        if total is None:  # every weight was zero: a defined, gradient-free zero
            total = image.embeds.sum() * 0.0
        out["loss"] = total
        return out


def build_loss(loss_cfg: Mapping[str, Any] | None = None, *, embed_dim: int | None = None) -> AlignmentLoss:
    """Build the alignment loss from the ``loss`` config section.

    Args:
        loss_cfg: the section as a plain mapping (``None`` = instance term only).
        embed_dim: the model's embedding size, filled into terms that own parameters
            of that size (``prototype``) when their config leaves ``embed_dim`` unset.

    Raises:
        ConfigError: unknown term name or key, wrong type, or a value out of range;
            the message names the dotted key (``loss.terms.token.weight``).
    """
    cfg = from_dict(LossConfig, loss_cfg, where="loss")
    if not isinstance(cfg.terms, Mapping):
        raise ConfigError("terms must be a mapping of term name to settings", field="loss.terms")
    built: dict[str, tuple[float, AlignmentTerm]] = {}
    resolved: dict[str, Any] = {}
    for name, section in cfg.terms.items():
        where = f"loss.terms.{name}"
        spec = LOSS_TERMS.get(str(name), field=where)
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"value {section!r} is not a section", field=where,
                              expected="a mapping such as {weight: 1.0}")
        section = dict(section or {})
        names = {f.name for f in dataclasses.fields(spec.config_cls)}
        if "embed_dim" in names and section.get("embed_dim") is None and embed_dim is not None:
            section["embed_dim"] = embed_dim
        term_cfg = from_dict(spec.config_cls, section, where=where)
        resolved[name] = to_dict(term_cfg)
        if term_cfg.weight == 0:
            continue
        built[name] = (term_cfg.weight, spec.build(term_cfg))
    return AlignmentLoss(built, LossConfig(terms=resolved))

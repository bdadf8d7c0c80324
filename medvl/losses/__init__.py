"""Multi-granularity image-report alignment losses.

:func:`build_loss` turns the ``loss`` config section into an :class:`AlignmentLoss`
whose forward takes the two towers' :class:`~medvl.models.outputs.EncoderOutput` and
returns every term by name plus the weighted total under ``"loss"``. Terms, formulas
and the choices made where papers and their code differ: ``docs/losses.md``.
"""

from medvl.losses.base import AlignmentTerm
from medvl.losses.combine import (
    LOSS_TERMS,
    AlignmentLoss,
    LossConfig,
    TermSpec,
    build_loss,
)
from medvl.losses.common import LossInputError
from medvl.losses.instance import InstanceConfig, InstanceLoss

__all__ = [
    "LOSS_TERMS",
    "AlignmentLoss",
    "AlignmentTerm",
    "InstanceConfig",
    "InstanceLoss",
    "LossConfig",
    "LossInputError",
    "TermSpec",
    "build_loss",
]

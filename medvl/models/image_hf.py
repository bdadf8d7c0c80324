"""Hugging Face transformers vision backbones: ViT, Swin and ConvNeXt (2D).

Built at random from the image section (``width``, ``depth``, ``patch_size``,
``image_size``, ``in_channels``) or, with ``pretrained: <local HF directory>``, with
that checkpoint's architecture and weights (the first layer adapted to
``in_channels``, see :mod:`medvl.models.pretrained`). The architecture is saved in
the model's ``config.json``, so a saved model reloads without the original folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medvl.errors import CheckpointError, ConfigError
from medvl.models.config import ImageConfig
from medvl.models.image2d import parse_options
from medvl.models.image_base import ImageEncoder, ImageFeatures
from medvl.models.registry import IMAGE_ENCODERS


@dataclass
class HFVisionOptions:
    """``model.image.options`` of the ``hf-*`` encoders (random init only).

    Attributes:
        num_heads: attention heads of ViT (per stage for Swin: doubled each stage).
        depths: blocks per stage for Swin / ConvNeXt (four stages).
        window_size: Swin attention window.
    """

    num_heads: int = 4
    depths: list[int] | None = None
    window_size: int = 7


class HFVisionEncoder(ImageEncoder):
    """A transformers vision model (base model, no head) as an image encoder.

    Args:
        model: ``ViTModel``, ``SwinModel`` or ``ConvNextModel``.
        kind: ``vit``, ``swin`` or ``convnext``.
        in_channels: expected input channels.
    """

    def __init__(self, model: Any, kind: str, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.in_channels = in_channels
        config = model.config
        if kind == "vit":
            self.out_dim = int(config.hidden_size)
            self.fixed_size = (int(config.image_size),) * 2
            self.min_size = int(config.patch_size)
        elif kind == "swin":
            self.out_dim = int(config.embed_dim * 2 ** (len(config.depths) - 1))
            # smaller inputs make a stage smaller than the window (see _random_config)
            self.min_size = int(config.patch_size * 2 ** (len(config.depths) - 1)) * int(config.window_size)
        else:
            self.out_dim = int(config.hidden_sizes[-1])
            self.min_size = 32
        self._cls_attention: torch.Tensor | None = None
        if kind == "vit":
            last = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")][-1]
            last.register_forward_pre_hook(self._capture_cls_attention, with_kwargs=True)

    def _capture_cls_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """The last layer's [CLS] -> patch attention, from its own projections.

        Asking transformers for ``output_attentions`` forces the eager kernel and keeps
        every layer's full ``(heads, N, N)`` map (600 MB for ViT-B at 512 px); one
        query row of the last layer is all that is needed.
        """
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, 1 + N, C)
        with torch.no_grad():
            b, n, _ = hidden.shape
            heads, dim = module.config.num_attention_heads, module.head_dim
            q = module.q_proj(hidden[:, :1]).view(b, 1, heads, dim).transpose(1, 2)
            k = module.k_proj(hidden).view(b, n, heads, dim).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) * module.scaling).softmax(-1)  # (B, heads, 1, 1 + N)
            attn = probs[:, :, 0, 1:].mean(1)  # (B, N)
            self._cls_attention = attn / attn.sum(-1, keepdim=True)

    def hf_config(self) -> dict[str, Any]:
        """The architecture, stored in the model directory's ``config.json``."""
        return self.model.config.to_dict()

    def load_pretrained(self, directory: str) -> None:
        """Copy the weights of a local HF checkpoint into this (same-architecture) model."""
        from transformers import AutoModel

        from medvl.models.pretrained import adapt_stem

        try:
            src = AutoModel.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load: {exc}".splitlines()[0], path=directory,
                                  field="model.image.pretrained") from None
        state = src.state_dict()
        own = self.model.state_dict()
        for key in state:
            if key in own and own[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
                state[key] = adapt_stem(state[key], own[key].shape[1])
        missing = set(own) - set(state)
        if missing:
            raise CheckpointError(f"{len(missing)} weights missing (e.g. {min(missing)})",
                                  path=directory, field="model.image.pretrained")
        self.model.load_state_dict({k: state[k] for k in own}, strict=True)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        if self.kind == "vit":
            hidden = self.model(pixel_values=x).last_hidden_state  # (B, 1 + N, C)
            side = self.fixed_size[0] // self.model.config.patch_size
            attn, self._cls_attention = self._cls_attention, None
            return ImageFeatures(pooled=hidden[:, 0], tokens=hidden[:, 1:], grid=(side, side),
                                 attention=attn)
        if self.kind == "swin":
            out = self.model(pixel_values=x, output_hidden_states=True)
            fmap = out.reshaped_hidden_states[-1]  # (B, C, h, w), before the final norm
            tokens = out.last_hidden_state  # (B, N, C), layer-normed, row-major
            return ImageFeatures(pooled=tokens.mean(1), tokens=tokens, grid=tuple(fmap.shape[2:]))
        out = self.model(pixel_values=x)
        fmap = out.last_hidden_state  # (B, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)
        return ImageFeatures(pooled=out.pooler_output, tokens=tokens, grid=tuple(fmap.shape[2:]))


def _random_config(kind: str, cfg: ImageConfig) -> Any:
    from transformers import ConvNextConfig, SwinConfig, ViTConfig

    opts = parse_options(HFVisionOptions, cfg)
    depths = list(opts.depths or [2, 2, 2, 2])
    if kind == "vit":
        if cfg.width % opts.num_heads:
            raise ConfigError(f"width {cfg.width} is not divisible by {opts.num_heads} heads",
                              field="model.image.width")
        return ViTConfig(hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                         num_attention_heads=opts.num_heads, intermediate_size=4 * cfg.width,
                         image_size=cfg.image_size, patch_size=cfg.patch_size,
                         num_channels=cfg.in_channels)
    if kind == "swin":
        last = cfg.image_size // (4 * 2 ** (len(depths) - 1))
        if opts.window_size > last:
            # transformers' Swin breaks when a stage is smaller than its window
            raise ConfigError(
                f"window {opts.window_size} exceeds the last stage ({last}x{last} at "
                f"image_size {cfg.image_size})", field="model.image.options.window_size",
                expected=f"<= {last}",
            )
        heads = [opts.num_heads * 2**i for i in range(len(depths))]
        return SwinConfig(image_size=cfg.image_size, patch_size=4, num_channels=cfg.in_channels,
                          embed_dim=cfg.width, depths=depths, num_heads=heads,
                          window_size=opts.window_size)
    return ConvNextConfig(num_channels=cfg.in_channels, depths=depths,
                          hidden_sizes=[cfg.width * 2**i for i in range(len(depths))])


def _build(kind: str, cfg: ImageConfig, saved: dict[str, Any] | None) -> HFVisionEncoder:
    from transformers import AutoConfig, AutoModel

    if saved is not None:
        hf = dict(saved)
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    elif cfg.pretrained:
        try:
            config = AutoConfig.from_pretrained(cfg.pretrained)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the config: {exc}".splitlines()[0],
                                  path=cfg.pretrained, field="model.image.pretrained") from None
        config.num_channels = cfg.in_channels
    else:
        config = _random_config(kind, cfg)
    if kind == "vit":
        config._attn_implementation = "sdpa"  # the [CLS] attention comes from a hook
    kwargs = {} if kind == "convnext" else {"add_pooling_layer": False}
    model = AutoModel.from_config(config, **kwargs)
    return HFVisionEncoder(model, kind, cfg.in_channels)


@IMAGE_ENCODERS.register("hf-vit")
def build_hf_vit(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``ViTModel`` ([CLS] global feature, patch tokens, [CLS] attention)."""
    return _build("vit", cfg, saved)


@IMAGE_ENCODERS.register("hf-swin")
def build_hf_swin(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``SwinModel`` (last stage tokens, mean-pooled)."""
    return _build("swin", cfg, saved)


@IMAGE_ENCODERS.register("hf-convnext")
def build_hf_convnext(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``ConvNextModel`` (last stage map as tokens, its pooled output)."""
    return _build("convnext", cfg, saved)

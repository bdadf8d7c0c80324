"""Hugging Face transformers vision backbones: ViT, Swin, ConvNeXt, CLIP, SigLIP, DINOv2 (2D).

Built at random from the image section (``width``, ``depth``, ``patch_size``,
``image_size``, ``in_channels``) or, with ``pretrained: <local HF directory>``, with
that checkpoint's architecture and weights (the first layer adapted to
``in_channels``, see :mod:`medvl.models.pretrained`). The architecture is saved in
the model's ``config.json``, so a saved model reloads without the original folder.

What each family returns as the global feature and the local tokens:

* ViT, DINOv2: the layer-normed [CLS] state, the patch states, and the last layer's
  [CLS] -> patch attention;
* CLIP: ``post_layernorm`` of the [CLS] state (CLIP's ``pooler_output``, the input of
  its projection); the patch states through the same ``post_layernorm``;
* SigLIP: the attention-pooling head's output (SigLIP has no [CLS] token), the
  layer-normed patch states, and the head's probe -> patch attention;
* Swin, ConvNeXt: the mean (or the model's pooler) of the last stage's map.

A directory holding a composite CLIP or SigLIP model (``CLIPModel``, ``SiglipModel``)
is read for its vision half; families without a pooling layer (DINOv2, CLIP, SigLIP)
are built without the ``add_pooling_layer`` argument. Any failure inside transformers
while reading a directory becomes a :class:`~medvl.errors.CheckpointError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medvl.errors import CheckpointError, ConfigError
from medvl.models.config import ImageConfig
from medvl.models.image2d import parse_options
from medvl.models.image_base import ImageEncoder, ImageFeatures


@dataclass(frozen=True)
class _Family:
    """How one transformers family is built and read.

    Attributes:
        model_class: the transformers class of the vision model (no task head).
        model_types: ``model_type`` values of configs this family accepts, either the
            vision config itself or a composite config whose ``vision_config`` is.
        pooling_kwarg: the class takes ``add_pooling_layer`` (set False: medvl pools).
    """

    model_class: str
    model_types: tuple[str, ...]
    pooling_kwarg: bool


_FAMILIES = {
    "vit": _Family("ViTModel", ("vit",), True),
    "swin": _Family("SwinModel", ("swin",), True),
    "convnext": _Family("ConvNextModel", ("convnext",), False),
    "clip": _Family("CLIPVisionModel", ("clip_vision_model", "clip"), False),
    "siglip": _Family("SiglipVisionModel", ("siglip_vision_model", "siglip"), False),
    "dinov2": _Family("Dinov2Model", ("dinov2",), False),
}
_CLS_FAMILIES = ("vit", "clip", "dinov2")  # a [CLS] token first in the sequence


@dataclass
class HFVisionOptions:
    """``model.image.options`` of the ``hf-*`` encoders (random init only).

    Attributes:
        num_heads: attention heads of the ViT-like families (per stage for Swin:
            doubled each stage).
        depths: blocks per stage for Swin / ConvNeXt (four stages).
        window_size: Swin attention window.
    """

    num_heads: int = 4
    depths: list[int] | None = None
    window_size: int = 7


def _vision_config(config: Any) -> Any:
    """The vision half of a composite config (CLIP, SigLIP), else the config itself."""
    return getattr(config, "vision_config", None) or config


class HFVisionEncoder(ImageEncoder):
    """A transformers vision model (base model, no task head) as an image encoder.

    Args:
        model: an instance of the family's ``model_class``.
        kind: a key of the families table (``vit``, ``swin``, ``convnext``, ``clip``,
            ``siglip``, ``dinov2``).
        in_channels: expected input channels.
    """

    def __init__(self, model: Any, kind: str, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.in_channels = in_channels
        config = model.config
        self.lora_targets = ["q_proj", "v_proj"]
        if kind == "swin":
            self.out_dim = int(config.embed_dim * 2 ** (len(config.depths) - 1))
            # smaller inputs make a stage smaller than the window (see _random_config)
            self.min_size = int(config.patch_size * 2 ** (len(config.depths) - 1)) * int(config.window_size)
            self.lora_targets = ["query", "value"]
        elif kind == "convnext":
            self.out_dim = int(config.hidden_sizes[-1])
            self.min_size = 32
            self.lora_targets = ["pwconv1", "pwconv2"]
        else:
            self.out_dim = int(config.hidden_size)
            self.min_size = int(config.patch_size)
            if kind != "dinov2":  # DINOv2 interpolates its position embeddings
                self.fixed_size = (int(config.image_size),) * 2
        self._attention: torch.Tensor | None = None
        if kind in _CLS_FAMILIES:
            last = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")][-1]
            last.register_forward_pre_hook(self._capture_cls_attention, with_kwargs=True)
        elif kind == "siglip" and getattr(_inner(model), "use_head", True):
            _inner(model).head.register_forward_pre_hook(self._capture_probe_attention)

    def _capture_cls_attention(self, module: Any, args: tuple, kwargs: dict) -> None:
        """The last layer's [CLS] -> patch attention, from its own projections.

        Asking transformers for ``output_attentions`` forces the eager kernel and keeps
        every layer's full ``(heads, N, N)`` map (600 MB for ViT-B at 512 px); one
        query row of the last layer is all that is needed.
        """
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, 1 + N, C)
        with torch.no_grad():
            b, n, _ = hidden.shape
            heads = getattr(module, "num_attention_heads", None) or module.num_heads
            dim = module.head_dim
            scale = getattr(module, "scaling", None) or module.scale
            q = module.q_proj(hidden[:, :1]).view(b, 1, heads, dim).transpose(1, 2)
            k = module.k_proj(hidden).view(b, n, heads, dim).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) * scale).softmax(-1)  # (B, heads, 1, 1 + N)
            attn = probs[:, :, 0, 1:].mean(1)  # (B, N)
            self._attention = attn / attn.sum(-1, keepdim=True)

    def _capture_probe_attention(self, module: Any, args: tuple) -> None:
        """SigLIP's pooling head: its learned probe's attention over the patch states."""
        hidden = args[0]  # (B, N, C), layer-normed
        mha = module.attention  # torch.nn.MultiheadAttention, batch_first
        with torch.no_grad():
            b, n, c = hidden.shape
            heads = mha.num_heads
            w_q, w_k, _ = mha.in_proj_weight.chunk(3)
            b_q, b_k, _ = mha.in_proj_bias.chunk(3)
            q = (module.probe @ w_q.T + b_q).view(1, 1, heads, c // heads).transpose(1, 2)
            k = (hidden @ w_k.T + b_k).view(b, n, heads, c // heads).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) / (c // heads) ** 0.5).softmax(-1)  # (B, heads, 1, N)
            self._attention = probs[:, :, 0].mean(1)

    def hf_config(self) -> dict[str, Any]:
        """The architecture, stored in the model directory's ``config.json``."""
        return self.model.config.to_dict()

    def load_pretrained(self, directory: str) -> None:
        """Copy the weights of a local HF checkpoint into this (same-architecture) model.

        A composite CLIP/SigLIP directory gives its vision half; an RGB first layer is
        adapted to ``in_channels``.
        """
        from medvl.models.pretrained import adapt_stem

        family = _FAMILIES[self.kind]
        src = _from_pretrained(family, directory)
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
        kind = self.kind
        if kind in ("vit", "dinov2", "clip"):
            out = self.model(pixel_values=x)
            hidden = out.last_hidden_state  # (B, 1 + N, C); CLIP's is before post_layernorm
            side_h, side_w = (s // self.min_size for s in x.shape[2:])
            tokens = hidden[:, 1:]
            pooled = hidden[:, 0]
            if kind == "clip":
                pooled = out.pooler_output  # post_layernorm([CLS])
                tokens = _inner(self.model).post_layernorm(tokens)
            attn, self._attention = self._attention, None
            return ImageFeatures(pooled=pooled, tokens=tokens, grid=(side_h, side_w), attention=attn)
        if kind == "siglip":
            out = self.model(pixel_values=x)
            tokens = out.last_hidden_state  # (B, N, C), after post_layernorm
            side = self.fixed_size[0] // self.min_size if self.fixed_size else 0
            pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(1)
            attn, self._attention = self._attention, None
            return ImageFeatures(pooled=pooled, tokens=tokens, grid=(side, side), attention=attn)
        if kind == "swin":
            out = self.model(pixel_values=x, output_hidden_states=True)
            fmap = out.reshaped_hidden_states[-1]  # (B, C, h, w), before the final norm
            tokens = out.last_hidden_state  # (B, N, C), layer-normed, row-major
            return ImageFeatures(pooled=tokens.mean(1), tokens=tokens, grid=tuple(fmap.shape[2:]))
        out = self.model(pixel_values=x)
        fmap = out.last_hidden_state  # (B, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)
        return ImageFeatures(pooled=out.pooler_output, tokens=tokens, grid=tuple(fmap.shape[2:]))


def _inner(model: Any) -> Any:
    """The vision transformer inside a CLIP/SigLIP vision model (older transformers nest it
    under ``vision_model``, newer ones do not)."""
    return getattr(model, "vision_model", model)


def _from_pretrained(family: _Family, directory: str) -> Any:
    """``family.model_class.from_pretrained(directory)``; any failure -> CheckpointError."""
    import transformers

    config = read_hf_config(directory, family)
    cls = getattr(transformers, family.model_class)
    kwargs = {"add_pooling_layer": False} if family.pooling_kwarg else {}
    try:
        return cls.from_pretrained(directory, config=config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; report them all as one
        raise CheckpointError(f"transformers cannot load the weights: {_first_line(exc)}",
                              path=directory, field="model.image.pretrained") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_hf_config(directory: str, family: _Family) -> Any:
    """The vision config of a local directory, checked against the family.

    Raises:
        CheckpointError: unreadable config, or a model of another family.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - see _from_pretrained
        raise CheckpointError(f"cannot read the config: {_first_line(exc)}", path=directory,
                              field="model.image.pretrained",
                              expected="a local Hugging Face model directory") from None
    if config.model_type not in family.model_types:
        raise CheckpointError(
            f"the directory holds a '{config.model_type}' model", path=directory,
            field="model.image.name",
            expected=f"a {family.model_class.removesuffix('Model')} checkpoint for this encoder",
        )
    return _vision_config(config)


def _random_config(kind: str, cfg: ImageConfig) -> Any:
    from transformers import (
        CLIPVisionConfig,
        ConvNextConfig,
        Dinov2Config,
        SiglipVisionConfig,
        SwinConfig,
        ViTConfig,
    )

    opts = parse_options(HFVisionOptions, cfg)
    depths = list(opts.depths or [2, 2, 2, 2])
    if kind in ("vit", "clip", "siglip", "dinov2"):
        if cfg.width % opts.num_heads:
            raise ConfigError(f"width {cfg.width} is not divisible by {opts.num_heads} heads",
                              field="model.image.width")
        common = {"hidden_size": cfg.width, "num_hidden_layers": cfg.depth,
                      "num_attention_heads": opts.num_heads, "intermediate_size": 4 * cfg.width,
                      "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                      "num_channels": cfg.in_channels}
        return {"vit": ViTConfig, "clip": CLIPVisionConfig, "siglip": SiglipVisionConfig,
                "dinov2": Dinov2Config}[kind](**common)
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
    import transformers
    from transformers import AutoConfig

    family = _FAMILIES[kind]
    if saved is not None:
        hf = dict(saved)
        config = _vision_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    elif cfg.pretrained:
        config = read_hf_config(cfg.pretrained, family)
        config.num_channels = cfg.in_channels
    else:
        config = _random_config(kind, cfg)
    if kind in _CLS_FAMILIES or kind == "siglip":
        config._attn_implementation = "sdpa"  # attention maps come from hooks
    kwargs = {"add_pooling_layer": False} if family.pooling_kwarg else {}
    try:
        model = getattr(transformers, family.model_class)(config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - see _from_pretrained
        raise CheckpointError(f"transformers cannot build the model: {_first_line(exc)}",
                              path=cfg.pretrained, field="model.image") from None
    return HFVisionEncoder(model, kind, cfg.in_channels)


def build_hf_vit(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``ViTModel`` ([CLS] global feature, patch tokens, [CLS] attention)."""
    return _build("vit", cfg, saved)


def build_hf_swin(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``SwinModel`` (last stage tokens, mean-pooled)."""
    return _build("swin", cfg, saved)


def build_hf_convnext(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """transformers ``ConvNextModel`` (last stage map as tokens, its pooled output)."""
    return _build("convnext", cfg, saved)


def build_hf_clip(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """CLIP's vision tower (``CLIPVisionModel``; a ``CLIPModel`` directory gives its half)."""
    return _build("clip", cfg, saved)


def build_hf_siglip(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """SigLIP's vision tower: attention-pooled global feature, no [CLS] token."""
    return _build("siglip", cfg, saved)


def build_hf_dinov2(cfg: ImageConfig, *, saved: dict[str, Any] | None = None) -> HFVisionEncoder:
    """``Dinov2Model`` (RAD-DINO): layer-normed [CLS] and patch states, any input size."""
    return _build("dinov2", cfg, saved)

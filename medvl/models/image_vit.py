"""MONAI transformer image encoders: ViT and Swin (2D, and 3D with ``spatial_dims=3``).

ViT returns its patch tokens on the patch grid and the [CLS] token as the global
feature, with the last layer's [CLS] attention over the patches (MGCA weights its
token loss with it). Swin returns its last stage's feature map like a CNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medvl.errors import ConfigError
from medvl.models.config import ImageConfig
from medvl.models.image2d import parse_options
from medvl.models.image_base import ImageEncoder, ImageFeatures


@dataclass
class ViTOptions:
    """``model.image.options`` of ``vit``.

    Attributes:
        num_heads: attention heads (``width`` must be divisible by it).
        mlp_ratio: MLP width as a multiple of ``width``.
        image_depth: 3D only: slices of the input (default ``image_size``, a cube).
    """

    num_heads: int = 4
    mlp_ratio: float = 4.0
    image_depth: int | None = None


class MonaiViTEncoder(ImageEncoder):
    """MONAI ViT with a [CLS] token; the classification head is removed.

    Args:
        cfg: the image section (``width`` = hidden size, ``depth`` = layers).
        spatial_dims: 2 or 3.
    """

    def __init__(self, cfg: ImageConfig, spatial_dims: int = 2) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        opts = parse_options(ViTOptions, cfg)
        if cfg.width % opts.num_heads:
            raise ConfigError(
                f"width {cfg.width} is not divisible by {opts.num_heads} heads",
                field="model.image.width", expected="a multiple of options.num_heads",
            )
        size = (cfg.image_size,) * spatial_dims
        if spatial_dims == 3 and opts.image_depth:
            size = (opts.image_depth, cfg.image_size, cfg.image_size)
        if any(s % cfg.patch_size for s in size):
            raise ConfigError(
                f"input size {size} is not a multiple of patch_size {cfg.patch_size}",
                field="model.image.patch_size",
            )
        self.net = ViT(
            in_channels=cfg.in_channels, img_size=size, patch_size=cfg.patch_size,
            hidden_size=cfg.width, mlp_dim=int(cfg.width * opts.mlp_ratio),
            num_layers=cfg.depth, num_heads=opts.num_heads, classification=True,
            spatial_dims=spatial_dims, save_attn=True, qkv_bias=True,
        )
        # the [CLS] state is the global feature; medvl's heads replace the classifier
        del self.net.classification_head
        blocks: list[Any] = list(self.net.blocks)  # MONAI's TransformerBlocks
        for block in blocks[:-1]:
            block.attn.save_attn = False  # only the last layer's map is used
        self.spatial_dims = spatial_dims
        self.in_channels = cfg.in_channels
        self.out_dim = cfg.width
        self._grid = tuple(s // cfg.patch_size for s in size)
        self.fixed_size = size
        self.min_size = cfg.patch_size
        self.lora_targets = ["qkv"]  # the fused attention projection (peft LoRA)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        hidden, _ = self.net(x)  # (B, 1 + N, C), layer-normed
        last: Any = self.net.blocks[-1]
        attn = last.attn.att_mat  # (B, heads, 1 + N, 1 + N), detached
        cls_to_patch = attn[:, :, 0, 1:].mean(1)  # (B, N)
        cls_to_patch = cls_to_patch / cls_to_patch.sum(-1, keepdim=True)
        return ImageFeatures(
            pooled=hidden[:, 0], tokens=hidden[:, 1:], grid=self._grid, attention=cls_to_patch
        )


def build_vit(cfg: ImageConfig, spatial_dims: int = 2) -> MonaiViTEncoder:
    """A MONAI ViT sized by ``width``/``depth``/``patch_size`` (ViT-B/16: 768, 12, 16)."""
    return MonaiViTEncoder(cfg, spatial_dims)


@dataclass
class SwinOptions:
    """``model.image.options`` of ``swin``.

    Attributes:
        window_size: attention window side (7 in the paper).
        depths: blocks per stage (four stages).
    """

    window_size: int = 7
    depths: list[int] | None = None


class MonaiSwinEncoder(ImageEncoder):
    """MONAI's Swin Transformer backbone; the last stage's map gives the tokens.

    Args:
        cfg: the image section (``width`` = embedding size of the first stage).
        spatial_dims: 2 or 3.
    """

    def __init__(self, cfg: ImageConfig, spatial_dims: int = 2) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        opts = parse_options(SwinOptions, cfg)
        depths = list(opts.depths or [2, 2, 2, 2])
        if len(depths) != 4:
            raise ConfigError("Swin has four stages", field="model.image.options.depths",
                              expected="a list of 4 block counts")
        # one head per 32 channels, as Swin-T (96 channels, 3 heads); channels double per stage
        heads = [max(1, cfg.width * 2**i // 32) for i in range(4)]
        if any((cfg.width * 2**i) % h for i, h in enumerate(heads)):
            raise ConfigError(f"width {cfg.width} does not split into heads",
                              field="model.image.width", expected="a multiple of 32, or < 32")
        self.net = SwinTransformer(
            in_chans=cfg.in_channels, embed_dim=cfg.width,
            window_size=(opts.window_size,) * spatial_dims, patch_size=(2,) * spatial_dims,
            depths=depths, num_heads=heads, spatial_dims=spatial_dims,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = cfg.in_channels
        self.out_dim = cfg.width * 16
        self.min_size = 32
        self.lora_targets = ["qkv"]

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        fmap = self.net(x, normalize=True)[-1]  # (B, 16 * width, *grid), stride 32
        grid = tuple(fmap.shape[2:])
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, C)
        return ImageFeatures(pooled=tokens.mean(1), tokens=tokens, grid=grid)


def build_swin(cfg: ImageConfig, spatial_dims: int = 2) -> MonaiSwinEncoder:
    """A MONAI Swin Transformer (Swin-T: width 96, depths [2, 2, 6, 2])."""
    return MonaiSwinEncoder(cfg, spatial_dims)


__all__ = ["MonaiSwinEncoder", "MonaiViTEncoder"]

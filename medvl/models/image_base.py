"""What every image encoder returns, and the input checks they share.

An image encoder maps ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D) to
:class:`ImageFeatures`: one pooled feature vector per image plus the local tokens it
was pooled from, in the encoder's own width. The model's projection heads then map
both to the shared embedding size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medvl.errors import ModelError


@dataclass
class ImageFeatures:
    """Unprojected output of an image encoder.

    Attributes:
        pooled: ``(B, C)`` global feature.
        tokens: ``(B, N, C)`` local features, row-major over ``grid``.
        grid: spatial shape of the tokens, ``(h, w)``, ``(d, h, w)`` or ``(n_slices,)``.
        mask: ``(B, N)`` bool, True for real tokens; None means all real.
        attention: ``(B, N)`` weights of the tokens in ``pooled``, or None.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, ...]
    mask: torch.Tensor | None = None
    attention: torch.Tensor | None = None


class ImageEncoder(nn.Module):
    """Base class: subclasses set ``spatial_dims``, ``in_channels``, ``out_dim``.

    ``min_size`` is the smallest side the encoder can take (its total stride), so a
    too-small image is reported before a layer fails on it; ``fixed_size`` is set by
    encoders with learned position embeddings that need one exact input size.
    """

    spatial_dims: int = 2
    in_channels: int = 1
    out_dim: int = 0
    min_size: int = 1
    fixed_size: tuple[int, ...] | None = None

    def check_input(self, x: torch.Tensor, *, what: str = "image") -> None:
        """Raise :class:`ModelError` unless ``x`` is a batch this encoder can take.

        Args:
            x: the input batch.
            what: the name used in the message (the argument or batch key).
        """
        if not isinstance(x, torch.Tensor):
            raise ModelError(
                f"expected a tensor, got {type(x).__name__}", field=what,
                expected="a float tensor",
            )
        if not torch.is_floating_point(x):
            raise ModelError(
                f"expected a floating-point tensor, got {x.dtype}", field=what,
                expected="float32 normalised intensities",
            )
        nd = self.spatial_dims
        layout = "(B, C, H, W)" if nd == 2 else "(B, C, D, H, W)"
        if x.ndim == nd + 3 and nd == 2:
            raise ModelError(
                f"got a volume of shape {tuple(x.shape)} but this image encoder is 2D only",
                field=what,
                expected=f"{layout}; set model.image.volume to 'slices' (slice pooling) "
                "or use a 3D encoder for volumes",
            )
        if x.ndim != nd + 2:
            raise ModelError(
                f"got shape {tuple(x.shape)} ({x.ndim} dims)", field=what,
                expected=f"{nd + 2} dims {layout}",
            )
        if x.shape[1] != self.in_channels:
            raise ModelError(
                f"got {x.shape[1]} channels", field=what,
                expected=f"{self.in_channels} (model.image.in_channels), shape {layout}",
            )
        spatial = tuple(x.shape[2:])
        if min(spatial) < self.min_size:
            raise ModelError(
                f"spatial size {spatial} is smaller than the encoder's stride", field=what,
                expected=f"every side >= {self.min_size}",
            )
        if self.fixed_size is not None and spatial != self.fixed_size:
            raise ModelError(
                f"spatial size {spatial} does not match the encoder's position embeddings",
                field=what, expected=f"{self.fixed_size} (model.image.image_size)",
            )
        if x.shape[0] == 0:
            raise ModelError("empty batch", field=what, expected="at least one image")

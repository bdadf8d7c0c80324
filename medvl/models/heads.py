"""Projection heads: map a tower's features into the shared embedding space.

The kinds are an explicit table (:data:`HEADS`). Besides medvl's own ``linear`` and
``mlp`` heads, two reproduce imported models exactly: ``identity`` (SigLIP has no
projection: its towers end in the joint space) and ``mlp-gelu`` (open_clip's text
``mlp`` projection, as in BiomedCLIP). ``bias=False`` gives the bias-free projections
of CLIP, open_clip and MedCLIP.
"""

from __future__ import annotations

import torch
from torch import nn

from medvl.errors import ConfigError


class LinearHead(nn.Module):
    """One linear layer ``in_dim -> embed_dim`` (CLIP's projection)."""

    def __init__(self, in_dim: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., embed_dim)
        return self.proj(x)


class MLPHead(nn.Module):
    """Two layers with GELU and layer norm (ConVIRT/MGCA-style non-linear projection)."""

    def __init__(self, in_dim: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        hidden = max(in_dim, embed_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=bias), nn.GELU(), nn.LayerNorm(hidden),
            nn.Linear(hidden, embed_dim, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., embed_dim)
        return self.net(x)


class GeluMLPHead(nn.Module):
    """open_clip's ``mlp`` text projection: Linear, GELU, Linear, hidden ``(in + out) // 2``."""

    def __init__(self, in_dim: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        hidden = (in_dim + embed_dim) // 2
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, embed_dim, bias=bias)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., embed_dim)
        return self.net(x)


class IdentityHead(nn.Module):
    """No projection: the tower's feature is the embedding (``in_dim == embed_dim``)."""

    def __init__(self, in_dim: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        del bias
        if in_dim != embed_dim:
            raise ConfigError(
                f"an identity head keeps the tower's width {in_dim}", field="model.embed_dim",
                expected=f"{in_dim}, or a linear/mlp head",
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


#: ``model.head`` / ``model.image_head`` / ``model.text_head`` -> head class
HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "mlp-gelu": GeluMLPHead,
    "identity": IdentityHead,
}


def build_head(kind: str, in_dim: int, embed_dim: int, *, bias: bool = True,
               field: str = "model.head") -> nn.Module:
    """A projection head by name (see :data:`HEADS`)."""
    try:
        cls = HEADS[kind]
    except KeyError:
        raise ConfigError(f"unknown projection head '{kind}'", field=field,
                          expected="one of " + ", ".join(sorted(HEADS))) from None
    return cls(in_dim, embed_dim, bias=bias)

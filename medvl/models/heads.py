"""Projection heads: map a tower's features into the shared embedding space."""

from __future__ import annotations

from torch import nn

from medvl.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("projection head")


@HEADS.register("linear")
class LinearHead(nn.Module):
    """One linear layer ``in_dim -> embed_dim`` (CLIP's projection)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x):  # (..., in_dim) -> (..., embed_dim)
        return self.proj(x)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Two layers with GELU and layer norm (ConVIRT/MGCA-style non-linear projection)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        hidden = max(in_dim, embed_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, embed_dim)
        )

    def forward(self, x):  # (..., in_dim) -> (..., embed_dim)
        return self.net(x)


def build_head(kind: str, in_dim: int, embed_dim: int) -> nn.Module:
    """A projection head by name (``linear`` or ``mlp``)."""
    return HEADS.get(kind, field="model.head")(in_dim, embed_dim)

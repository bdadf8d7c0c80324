"""The tower factory: an explicit table, every row resolves, unknown names list the choices."""

from __future__ import annotations

import inspect

import pytest

from medvl.errors import ConfigError
from medvl.models.config import ImageConfig, TextConfig
from medvl.models.factory import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    build_image_encoder,
    build_text_encoder,
)


@pytest.mark.parametrize("table", [IMAGE_ENCODERS, TEXT_ENCODERS], ids=["image", "text"])
def test_every_row_resolves_to_a_builder(table):
    for name, row in table.items():
        builder = row.resolve()  # a missing module or function fails here, not silently
        params = inspect.signature(builder).parameters
        assert set(row.kwargs) <= set(params), name
        if row.checkpoint_shaped or table is TEXT_ENCODERS:
            assert "saved" in params, name
        assert row.summary, name


def test_the_pretrained_families_are_in_the_table():
    assert {"hf-clip", "hf-siglip", "hf-dinov2", "hf-vit", "hf-swin"} <= set(IMAGE_ENCODERS)
    assert {"hf-clip", "hf-siglip", "bert", "hf", "llm"} <= set(TEXT_ENCODERS)
    assert not hasattr(__import__("medvl.models", fromlist=["x"]), "registry")


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="hf-dinov2") as err:
        build_image_encoder(ImageConfig(name="dino"))
    assert err.value.field == "model.image.name"
    with pytest.raises(ConfigError, match="hf-siglip") as err:
        build_text_encoder(TextConfig(name="clip"))
    assert err.value.field == "model.text.name"


@pytest.mark.parametrize("name", ["hf-clip", "hf-siglip", "hf-dinov2"])
def test_random_pretrained_families_build_without_add_pooling_layer(name):
    """The old AutoModel.from_config(..., add_pooling_layer=False) raised TypeError for these."""
    import torch

    enc = build_image_encoder(ImageConfig(name=name, in_channels=1, image_size=32, width=32, depth=1,
                                          patch_size=8, options={"num_heads": 2})).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 1, 32, 32))
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 16, 32) and out.grid == (4, 4)
    assert out.attention is not None and torch.allclose(out.attention.sum(-1), torch.ones(2), atol=1e-5)

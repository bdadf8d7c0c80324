"""Tiny model configs shared by the model-room tests (hidden 32, two layers)."""

from __future__ import annotations

import copy

import pytest
import torch

TINY = {
    "embed_dim": 16,
    "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_length": 32},
}


@pytest.fixture
def tiny_cfg() -> dict:
    """A fresh copy of the tiny model section."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_model():
    """One tiny model in eval mode, shared read-only by tests that only run it."""
    from medvl.models import build_model

    torch.manual_seed(0)
    return build_model(copy.deepcopy(TINY)).eval()

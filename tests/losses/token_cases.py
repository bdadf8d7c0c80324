"""Helpers shared by the token-term tests (GLoRIA, FILIP): float64 tower outputs and a scalar cross entropy."""

from __future__ import annotations

import math

import torch

from medvl.models.outputs import EncoderOutput

F64 = torch.float64


def outputs(words, regions, word_mask=None, region_mask=None):
    """Image and text :class:`EncoderOutput` holding the given word and region tokens (float64)."""
    words = torch.as_tensor(words, dtype=F64)
    regions = torch.as_tensor(regions, dtype=F64)
    b, _, d = words.shape
    image = EncoderOutput(torch.ones(b, d, dtype=F64), regions, region_mask, (regions.shape[1],))
    text = EncoderOutput(torch.ones(b, d, dtype=F64), words, word_mask)
    return image, text


def ce(logits: list[float], target: int) -> float:
    """Cross entropy of one row of logits, worked with plain floats."""
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]

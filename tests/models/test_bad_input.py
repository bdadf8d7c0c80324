"""Bad input gives a medvl error naming what was expected, never a deep shape error."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ModelError, ReportError
from medvl.models import build_model


def test_wrong_channel_count(tiny_model):
    with pytest.raises(ModelError, match=r"got 3 channels.*expected 1 \(model.image.in_channels\)"):
        tiny_model.encode_image(torch.randn(2, 3, 64, 64))


def test_volume_given_to_a_2d_encoder(tiny_model):
    with pytest.raises(ModelError, match="2D only.*slices"):
        tiny_model.encode_image(torch.randn(1, 1, 8, 64, 64))


def test_missing_batch_or_channel_axis(tiny_model):
    with pytest.raises(ModelError, match=r"4 dims \(B, C, H, W\)"):
        tiny_model.encode_image(torch.randn(64, 64))
    with pytest.raises(ModelError, match="floating-point"):
        tiny_model.encode_image(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ModelError, match="stride"):
        tiny_model.encode_image(torch.randn(1, 1, 16, 64))


def test_empty_report(tiny_model):
    with pytest.raises(ReportError, match="report 1 is empty"):
        tiny_model.embed_texts(["Normal chest.", "   "])
    with pytest.raises(ReportError, match="non-empty list"):
        tiny_model.tokenize([])
    with pytest.raises(ReportError, match="report 0 is a NoneType"):
        tiny_model.tokenize([None])


def test_long_report_is_truncated_to_max_length(tiny_model):
    long = " ".join(["chest"] * 100)  # one WordPiece per word
    tokens = tiny_model.tokenize([long, "Normal."])
    assert tokens["input_ids"].shape == (2, 32)  # model.text.max_length
    with torch.no_grad():
        out = tiny_model.encode_text(**tokens)
    assert out.local_mask[0].sum() == 30  # [CLS] + 30 words + [SEP]


def test_long_report_can_be_an_error(tiny_cfg):
    tiny_cfg["text"]["truncation"] = "error"
    model = build_model(tiny_cfg)
    with pytest.raises(ReportError, match=r"report 0 has \d+ tokens.*at most 32"):
        model.tokenize([" ".join(["effusion"] * 40)])


def test_hand_made_token_batches_are_checked(tiny_model):
    with pytest.raises(ModelError, match="input_ids"):
        tiny_model.encode_text(torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    with pytest.raises(ModelError, match="positions"):
        tiny_model.encode_text(torch.ones(1, 40, dtype=torch.long),
                               torch.ones(1, 40, dtype=torch.long))
    with pytest.raises(ModelError, match="vocabulary"):
        tiny_model.encode_text(torch.full((1, 4), 10**6), torch.ones(1, 4, dtype=torch.long))

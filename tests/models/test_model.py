"""The dual encoder: shapes, word merging, gradients, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.errors import ConfigError
from medvl.models import build_model

REPORT = "No pneumothorax. Mild cardiomegaly."


def test_logit_scale_starts_at_log_inverse_temperature(tiny_model):
    assert tiny_model.logit_scale.requires_grad
    assert tiny_model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert tiny_model.logit_scale.exp().item() == pytest.approx(14.2857, rel=1e-4)


def test_encode_image_returns_global_and_patch_tokens_on_their_grid(tiny_model):
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        out = tiny_model.encode_image(x)
    # ResNet total stride 32: 96x64 -> 3x2 cells, one token per cell
    assert out.grid == (3, 2)
    assert out.embeds.shape == (3, 16)
    assert out.local_embeds.shape == (3, 6, 16)
    assert out.local_mask.dtype == torch.bool and out.local_mask.all()
    assert out.words is None


def test_patch_tokens_are_row_major_over_the_grid(tiny_model):
    # an image that differs only in its bottom-right region changes the last token most
    torch.manual_seed(1)
    x = torch.randn(1, 1, 128, 128)
    y = x.clone()
    y[..., 96:, 96:] += 5.0
    with torch.no_grad():
        a, b = tiny_model.encode_image(x), tiny_model.encode_image(y)
    change = (a.local_embeds - b.local_embeds).norm(dim=-1)[0]  # (16,)
    assert a.grid == (4, 4)
    assert int(change.argmax()) == 15


def test_word_pieces_are_merged_into_words(tiny_model):
    enc = tiny_model.text_encoder
    tokens = tiny_model.tokenize([REPORT])
    pieces = enc.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0].tolist())
    assert sum(p.startswith("##") for p in pieces) >= 3  # pneumothorax is cut into pieces
    with torch.no_grad():
        out = tiny_model.encode_text(**tokens)
        hidden = enc.model(input_ids=tokens["input_ids"],
                           attention_mask=tokens["attention_mask"]).last_hidden_state
    assert out.words == [["no", "pneumothorax", ".", "mild", "cardiomegaly", "."]]
    assert out.local_mask.tolist() == [[True] * 6]
    # independent reference: the word vector is the projection of the mean of its pieces
    ids = tokens["word_ids"][0]
    ref = hidden[0, ids == 1].mean(0)
    expected = tiny_model.text_local_head(ref)
    assert torch.allclose(out.local_embeds[0, 1], expected, atol=1e-5)
    assert out.grid is None
    assert out.attention is not None
    assert torch.allclose(out.attention.sum(-1), torch.ones(1), atol=1e-5)


def test_padding_words_are_masked_and_do_not_change_results(tiny_model):
    short = "Normal chest."
    with torch.no_grad():
        alone = tiny_model.embed_texts([short])
        batched = tiny_model.embed_texts([short, REPORT])
    assert batched.local_mask[0].tolist() == [True, True, True, False, False, False]
    assert torch.allclose(alone.embeds[0], batched.embeds[0], atol=1e-5)
    assert torch.allclose(alone.local_embeds[0], batched.local_embeds[0, :3], atol=1e-5)


def test_word_ids_recovered_when_not_passed(tiny_model):
    tokens = tiny_model.tokenize([REPORT, "Normal."])
    with torch.no_grad():
        a = tiny_model.encode_text(**tokens)
        b = tiny_model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert a.words == b.words
    assert torch.equal(a.local_mask, b.local_mask)
    assert torch.allclose(a.local_embeds, b.local_embeds)


def test_every_trainable_parameter_gets_a_gradient(tiny_cfg):
    # DistributedDataParallel fails on parameters that never receive a gradient
    model = build_model(tiny_cfg).train()
    img = model.encode_image(torch.randn(2, 1, 64, 64))
    txt = model.embed_texts([REPORT, "Normal chest."])
    loss = (img.embeds @ txt.embeds.T).sum() * model.logit_scale.exp()
    loss = loss + (img.local_embeds.sum() + (txt.local_embeds * txt.attention[..., None]).sum())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_config_errors_name_the_key(tiny_cfg):
    tiny_cfg["image"]["name"] = "resnet999"
    with pytest.raises(ConfigError, match="model.image.name") as exc:
        build_model(tiny_cfg)
    assert "resnet18" in str(exc.value)  # the choices are listed
    with pytest.raises(ConfigError, match="model.text.pooling"):
        build_model({"text": {"pooling": "max"}})
    with pytest.raises(ConfigError, match="model.image.colour"):
        build_model({"image": {"colour": 1}})
    with pytest.raises(ConfigError, match="model.image.slab"):
        build_model({"image": {"slab": 2}})


def test_config_attribute_round_trips_through_build(tiny_model):
    cfg = tiny_model.config
    assert cfg["image"]["name"] == "resnet10" and cfg["text"]["hidden_size"] == 32
    again = build_model(cfg)
    assert again.config == cfg


def test_mlp_heads_project_both_towers(tiny_cfg):
    tiny_cfg["head"] = "mlp"
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        img = model.encode_image(torch.randn(1, 1, 64, 64))
        txt = model.embed_texts([REPORT])
    assert img.embeds.shape == txt.embeds.shape == (1, 16)
    assert isinstance(model.text_head.net[1], torch.nn.GELU)
    with pytest.raises(ConfigError, match="model.head"):
        build_model({"head": "deep"})

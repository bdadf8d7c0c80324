"""Frozen towers, LoRA on either tower, and starting from a saved model directory (init_from)."""

from __future__ import annotations

import copy

import pytest
import torch

from medvl.errors import CheckpointError, ConfigError
from medvl.models import MedVLModel, build_model

HF_TINY = {"name": "hf-vit", "in_channels": 1, "image_size": 32, "width": 32, "depth": 2, "patch_size": 8,
           "options": {"num_heads": 2}}


def _trainable(model, prefix):
    return {n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}


def test_frozen_image_tower_keeps_weights_and_eval_mode(tiny_cfg):
    tiny_cfg["image"]["freeze"] = True
    model = build_model(tiny_cfg).train()
    assert not _trainable(model, "image_encoder.")
    assert _trainable(model, "image_head.") and _trainable(model, "text_encoder.")
    assert not model.image_encoder.training  # BatchNorm statistics stay fixed


def test_image_lora_trains_only_adapters_and_reloads(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg["image"] = dict(HF_TINY, lora_rank=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    trainable = _trainable(model, "image_encoder.")
    assert trainable and all("lora_" in n for n in trainable)
    x = torch.randn(2, 1, 32, 32)
    before = model.encode_image(x).embeds.detach()
    model.encode_image(x).embeds.sum().backward()  # lora_B starts at 0: output unchanged, grads flow
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n)
    model.eval()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(MedVLModel.from_pretrained(tmp_path).encode_image(x).embeds,
                              model.encode_image(x).embeds, atol=1e-6)
        assert torch.allclose(model.encode_image(x).embeds, before, atol=1e-6)


def test_lora_on_an_encoder_without_defaults_needs_targets(tiny_cfg):
    tiny_cfg["image"]["lora_rank"] = 2  # resnet10: no default targets
    with pytest.raises(ConfigError, match="lora_targets"):
        build_model(tiny_cfg)
    tiny_cfg["image"]["lora_targets"] = ["conv1"]
    assert _trainable(build_model(tiny_cfg), "image_encoder.")


def test_init_from_starts_from_the_saved_weights_with_new_training_options(tiny_cfg, tmp_path):
    tiny_cfg["image"] = dict(HF_TINY)
    torch.manual_seed(0)
    base = build_model(tiny_cfg).eval()
    base.zeroshot = {"scoring": "classes", "ensemble": "mean"}
    base.provenance = {"name": "X", "conversion": "imported."}
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)  # a different seed: the weights must come from the directory
    model = build_model({"init_from": str(tmp_path / "base"), "image": {"freeze": True},
                         "text": {"lora_rank": 2}}).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x).embeds, base.encode_image(x).embeds, atol=1e-6)
        assert torch.allclose(model.embed_texts(["no effusion"]).embeds, base.embed_texts(["no effusion"]).embeds,
                              atol=1e-5)
    assert not _trainable(model, "image_encoder.")
    assert all("lora_" in n for n in _trainable(model, "text_encoder."))
    assert model.zeroshot == base.zeroshot
    assert model.provenance["conversion"] == "imported; then fine-tuned with medvl"
    model.save_pretrained(tmp_path / "tuned")
    again = MedVLModel.from_pretrained(tmp_path / "tuned")  # loads without the original directory
    assert again.cfg.init_from is None and again.cfg.image.freeze and again.zeroshot == base.zeroshot


def test_init_from_refuses_an_architecture_change(tiny_cfg, tmp_path):
    build_model(tiny_cfg).save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="init_from"):
        build_model({"init_from": str(tmp_path / "base"), "embed_dim": 8})


def test_heads_of_imported_models():
    from medvl.models.heads import GeluMLPHead, build_head

    head = build_head("mlp-gelu", 64, 24, bias=False)
    assert isinstance(head, GeluMLPHead) and head.net[0].weight.shape == (44, 64) and head.net[0].bias is None
    assert torch.equal(build_head("identity", 8, 8)(torch.ones(2, 8)), torch.ones(2, 8))
    with pytest.raises(ConfigError, match="identity"):
        build_head("identity", 8, 16)
    with pytest.raises(ConfigError, match="mlp-gelu"):
        build_head("mlp3", 8, 8)


def test_pool_layers_are_checked(tiny_cfg):
    tiny_cfg["text"]["pool_layers"] = [1, 5]
    with pytest.raises(ConfigError, match="pool_layers"):
        build_model(tiny_cfg)

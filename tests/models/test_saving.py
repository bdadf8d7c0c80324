"""One model format: save_pretrained / from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch

from medvl.errors import CheckpointError
from medvl.models import MedVLModel, build_model

TEXTS = ["No pneumothorax. Mild cardiomegaly.", "Normal chest."]


@pytest.fixture
def trained_like(tiny_cfg):
    """A tiny model whose weights and BatchNorm statistics moved away from init."""
    torch.manual_seed(3)
    model = build_model(tiny_cfg).train()
    with torch.no_grad():
        model.encode_image(torch.randn(4, 1, 64, 64) * 3 + 1)  # updates running stats
        model.logit_scale.fill_(3.0)
    return model.eval()


def test_round_trip_reproduces_embeddings_exactly(trained_like, tmp_path, monkeypatch):
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        img, txt = trained_like.encode_image(x), trained_like.embed_texts(TEXTS)
    trained_like.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= names
    # loading must not need the MiniLM package the tokenizer originally came from
    import medvl.models.text_base as tb

    monkeypatch.setattr(tb, "minilm_path", lambda: (_ for _ in ()).throw(AssertionError("used")))
    loaded = MedVLModel.from_pretrained(tmp_path / "m")
    assert not loaded.training
    with torch.no_grad():
        img2, txt2 = loaded.encode_image(x), loaded.embed_texts(TEXTS)
    assert torch.equal(img.embeds, img2.embeds)
    assert torch.equal(img.local_embeds, img2.local_embeds)
    assert torch.equal(txt.embeds, txt2.embeds)
    assert torch.equal(txt.local_embeds, txt2.local_embeds)
    assert txt.words == txt2.words
    assert loaded.logit_scale.item() == 3.0
    assert loaded.config == trained_like.config


def test_weights_are_plain_safetensors(trained_like, tmp_path):
    from safetensors.torch import load_file

    trained_like.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    own = trained_like.state_dict()
    assert set(state) == set(own)
    assert torch.equal(state["logit_scale"], own["logit_scale"])


def test_model_card_is_filled(trained_like, tmp_path):
    trained_like.save_pretrained(tmp_path, card={"training_data": "synthetic demo corpus",
                                                 "seed": 7})
    card = (tmp_path / "README.md").read_text()
    assert "resnet10" in card and "synthetic demo corpus" in card and "**seed**: 7" in card
    assert "$" not in card.replace("$$", "")  # every placeholder filled
    assert "0.0498" in card  # temperature exp(-3)


def test_saving_keeps_other_files_in_the_directory(trained_like, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    trained_like.save_pretrained(tmp_path)
    assert (tmp_path / "run.json").read_text() == "{}"


def test_loading_a_wrong_directory_is_a_clear_error(trained_like, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        MedVLModel.from_pretrained(tmp_path)
    trained_like.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["embed_dim"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        MedVLModel.from_pretrained(tmp_path)
    cfg["model"]["embed_dim"] = 16
    cfg["model"]["image"]["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="bogus"):
        MedVLModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="format"):
        MedVLModel.from_pretrained(tmp_path)


def test_a_model_directory_caught_mid_replacement_still_loads(trained_like, tmp_path):
    """Training killed while replacing run/model: the complete new version waits in a staging
    folder and the old one is parked; loading puts the new one back in place."""
    import os

    trained_like.save_pretrained(tmp_path / "new")
    (tmp_path / "old").mkdir()
    staging = tmp_path / ".model.staging-kill"
    staging.mkdir()
    os.replace(tmp_path / "new", staging / "model")  # step 1 done: complete
    os.replace(tmp_path / "old", staging / "old")  # step 2 done: 'model' is gone
    loaded = MedVLModel.from_pretrained(tmp_path / "model")
    assert loaded.config == trained_like.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

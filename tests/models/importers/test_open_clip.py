"""open_clip checkpoints in BiomedCLIP's layout against a plain-torch forward of the original.

The image reference is timm's VisionTransformer as described by its code (patch conv,
[CLS] and position embeddings, pre-norm blocks with a fused qkv and exact GELU,
LayerNorm eps 1e-6, [CLS] after the final norm) followed by open_clip's bias-free
``head.proj``; the text reference is what open_clip's HFTextEncoder does: a transformers
BertModel with mask ``ids != pad``, the [CLS] state (cls_last_hidden_state_pooler) and
the ``mlp`` projection (Linear-GELU-Linear, no biases).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medvl.errors import CheckpointError
from medvl.models import MedVLModel
from medvl.models.importers import detect_format, import_model


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.attn.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    def __init__(self, size=32, patch=8, dim=64, depth=2):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.1)
        self.blocks = nn.ModuleList([TimmBlock(dim, dim // 64) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


class OpenCLIPLike(nn.Module):
    """Module names as open_clip's CustomTextCLIP: visual.trunk/head, text.transformer/proj."""

    def __init__(self, vocab: int, embed: int = 24):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.visual = nn.Module()
        self.visual.trunk = TimmViT()
        self.visual.head = nn.Module()
        self.visual.head.proj = nn.Linear(64, embed, bias=False)
        self.text = nn.Module()
        self.text.transformer = BertModel(BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=1, intermediate_size=128,
                                                     max_position_embeddings=64), add_pooling_layer=False)
        hidden = (64 + embed) // 2
        self.text.proj = nn.Sequential(nn.Linear(64, hidden, bias=False), nn.GELU(),
                                       nn.Linear(hidden, embed, bias=False))
        self.logit_scale = nn.Parameter(torch.tensor(4.0))

    def encode_image(self, x):
        return self.visual.head.proj(self.visual.trunk(x))

    def encode_text(self, ids, pad_id):
        mask = (ids != pad_id).long()
        out = self.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.text.proj(out[:, 0])


OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 48},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


@pytest.fixture
def biomedclip(tmp_path, bert_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_tokenizer))
    torch.manual_seed(0)
    ref = OpenCLIPLike(len(tok))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.eval()
    src = tmp_path / "BiomedCLIP-tiny"
    src.mkdir()
    state = ref.state_dict()
    # the released checkpoint was written by an older transformers: no position_ids
    # buffer is needed, but an old one must be tolerated
    state["text.transformer.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(state, src / "open_clip_pytorch_model.bin")
    (src / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    tok.save_pretrained(src)
    return ref, tok, src


def test_open_clip_checkpoint_matches_the_original_forward(tmp_path, biomedclip, texts, same_embeddings):
    ref, tok, src = biomedclip
    assert detect_format(src) == "open-clip"
    out = import_model(src, tmp_path / "m", licence="MIT", hub_name="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    model = MedVLModel.from_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    # open_clip's HFTokenizer pads to context_length; the mask comes from ids != pad
    ids = tok(texts, padding="max_length", max_length=48, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, ref.encode_image(x))
        same_embeddings(model.embed_texts(texts).embeds, ref.encode_text(ids, tok.pad_token_id))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["text_head"] == "mlp-gelu" and config["model"]["text"]["max_length"] == 48
    assert config["zeroshot"]["scoring"] == "classes"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["hub_name"].startswith("microsoft/BiomedCLIP") and prov["licence"] == "MIT"


def test_open_clip_weights_file_with_config_beside_it(tmp_path, biomedclip, same_embeddings):
    ref, _, src = biomedclip
    model = MedVLModel.from_pretrained(import_model(src / "open_clip_pytorch_model.bin", tmp_path / "m"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, ref.encode_image(x))


def test_unsupported_open_clip_layouts_are_named(tmp_path, biomedclip):
    _, _, src = biomedclip
    for change, match in (({"vision_cfg": {"timm_model_name": "convnext_base"}}, "convnext_base"),
                          ({"text_cfg": {"hf_pooler_type": "cls_pooler"}}, "cls_pooler")):
        cfg = json.loads(json.dumps(OPEN_CLIP_CONFIG))
        for section, values in change.items():
            cfg["model_cfg"][section].update(values)
        (src / "open_clip_config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=match):
            import_model(src, tmp_path / "m")
    (src / "open_clip_config.json").unlink()
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        import_model(src / "open_clip_pytorch_model.bin", tmp_path / "m")


def test_real_radiograph_through_biomedclip(tmp_path, biomedclip, source_input, same_embeddings):
    ref, _, src = biomedclip
    mean = OPEN_CLIP_CONFIG["preprocess_cfg"]["mean"]
    pipe, x = source_input(import_model(src, tmp_path / "m"), size=32, mean=mean,
                           std=OPEN_CLIP_CONFIG["preprocess_cfg"]["std"])
    assert pipe.data_config.fit == "crop" and pipe.data_config.resample == "bicubic"
    with torch.no_grad():
        same_embeddings(pipe.model.encode_image(x[None]).embeds, ref.encode_image(x[None]))

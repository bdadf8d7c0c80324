"""OpenAI CLIP state dicts (CheXzero's layout) against a plain-torch forward of the original.

The reference below is written from OpenAI's architecture (``clip/model.py``:
VisionTransformer, ResidualAttentionBlock with ``nn.MultiheadAttention`` and QuickGELU,
the causal text transformer pooled at the end-of-text token) and tokenizer
(``simple_tokenizer.py``: lower-cased regex words, byte symbols, merges by rank). It
does not use medvl's key mapping, so a wrong mapping shows as a different embedding.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections import OrderedDict

import pytest
import regex
import torch
from torch import nn

from medvl.errors import CheckpointError
from medvl.models import MedVLModel
from medvl.models.importers import detect_format, import_model


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask=None):  # x: (L, N, D), sequence first as in the original
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])


class Visual(nn.Module):
    def __init__(self, size, patch, width, layers, embed):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Stack(width, layers, width // 64)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # (N, grid^2, D)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding).permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x.permute(1, 0, 2)[:, 0]) @ self.proj


class OpenAICLIP(nn.Module):
    def __init__(self, *, size=32, patch=8, width=64, layers=2, embed=24, vocab=600, context=32, twidth=64):
        super().__init__()
        self.visual = Visual(size, patch, width, layers, embed)
        self.token_embedding = nn.Embedding(vocab, twidth)
        self.positional_embedding = nn.Parameter(torch.randn(context, twidth) * 0.1)
        self.transformer = Stack(twidth, layers, twidth // 64)
        self.ln_final = nn.LayerNorm(twidth)
        self.text_projection = nn.Parameter(torch.randn(twidth, embed) * twidth ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.2))
        self.context = context

    def encode_text(self, ids):
        x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
        mask = torch.full((self.context, self.context), float("-inf")).triu(1)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


def _bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class SimpleTokenizer:
    """OpenAI's tokenizer algorithm, re-implemented from its description."""

    PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)

    def __init__(self, bpe_path):
        with gzip.open(bpe_path) as f:
            merges = f.read().decode("utf-8").split("\n")[1:]
        merges = [tuple(m.split()) for m in merges if m.strip()]
        self.byte = _bytes_to_unicode()
        vocab = list(self.byte.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, token):
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(self.ranks.get(p, 1e9), i) for i, p in enumerate(itertools.pairwise(word))]
            rank, i = min(pairs)
            if rank == 1e9:
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]
        return word

    def __call__(self, text, context):
        text = " ".join(text.split()).strip().lower()
        ids = [self.encoder["<|startoftext|>"]]
        for tok in regex.findall(self.PAT, text):
            tok = "".join(self.byte[b] for b in tok.encode("utf-8"))
            ids += [self.encoder[t] for t in self.bpe(tok)]
        ids.append(self.encoder["<|endoftext|>"])
        return ids + [0] * (context - len(ids))


def _randomise(module):
    with torch.no_grad():  # LayerNorm weights at 1/0 would hide a swapped pair
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


@pytest.fixture
def chexzero(tmp_path, clip_tokenizer):
    vocab = len(json.loads((clip_tokenizer / "vocab.json").read_text()))
    torch.manual_seed(0)
    ref = OpenAICLIP(vocab=vocab)
    _randomise(ref)
    ref.eval()
    path = tmp_path / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_openai_state_dict_matches_the_original_forward(tmp_path, chexzero, clip_bpe_file, texts,
                                                        same_embeddings):
    ref, path = chexzero
    assert detect_format(path) == "openai-clip"
    out = import_model(path, tmp_path / "m", tokenizer=clip_bpe_file)  # OpenAI's BPE file, converted
    model = MedVLModel.from_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    simple = SimpleTokenizer(clip_bpe_file)
    ids = torch.tensor([simple(t, 32) for t in texts])
    tokens = model.tokenize(texts)
    for i in range(len(texts)):  # the converted tokenizer gives OpenAI's ids
        real = tokens["attention_mask"][i].bool()
        assert tokens["input_ids"][i][real].tolist() == [t for t in ids[i].tolist() if t][: int(real.sum())]
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, ref.visual(x))
        same_embeddings(model.encode_text(**tokens).embeds, ref.encode_text(ids))
    assert float(model.logit_scale) == pytest.approx(float(ref.logit_scale))
    config = json.loads((out / "config.json").read_text())
    assert config["zeroshot"] == {"scoring": "softmax", "ensemble": "mean", "prompts": "chexzero"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["name"] == "CheXzero" and path.name in prov["source"]


def test_resnet_and_torchscript_checkpoints_are_refused(tmp_path, clip_tokenizer):
    resnet = {"visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1), "token_embedding.weight": torch.zeros(8, 4),
              "visual.conv1.weight": torch.zeros(4, 3, 3, 3)}
    torch.save(resnet, tmp_path / "rn50.pt")
    with pytest.raises(CheckpointError, match="ResNet"):
        import_model(tmp_path / "rn50.pt", tmp_path / "m", tokenizer=clip_tokenizer)
    scripted = torch.jit.script(nn.Linear(2, 2))
    scripted.save(str(tmp_path / "jit.pt"))
    with pytest.raises(CheckpointError, match="TorchScript"):
        import_model(tmp_path / "jit.pt", tmp_path / "m2", format="openai-clip", tokenizer=clip_tokenizer)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_a_pickle_with_code_is_not_executed(tmp_path, clip_tokenizer):
    """weights_only: a checkpoint that would run code on load is refused, not run."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open({!r}, 'w').write('ran')".format(str(tmp_path / "ran.txt")),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"visual.conv1.weight": Boom()}, f)
    with pytest.raises(CheckpointError):
        import_model(tmp_path / "evil.pt", tmp_path / "m", format="openai-clip", tokenizer=clip_tokenizer)
    assert not (tmp_path / "ran.txt").exists()


def test_missing_tokenizer_is_a_clear_error(tmp_path, chexzero):
    _, path = chexzero
    with pytest.raises(CheckpointError, match="bpe_simple_vocab_16e6"):
        import_model(path, tmp_path / "m")


def test_real_radiograph_through_chexzero(tmp_path, chexzero, clip_bpe_file, source_input, same_embeddings):
    ref, path = chexzero
    out = import_model(path, tmp_path / "m", tokenizer=clip_bpe_file)
    mean, std = [101.48761 / 255] * 3, [83.43944 / 255] * 3  # CheXzero's, on the 0-255 scale
    pipe, x = source_input(out, size=32, mean=mean, std=std)
    assert pipe.data_config.fit == "pad"  # CheXzero pads the long side, as medvl does
    grey = x[0] * std[0] + mean[0]
    # RG1 is taller (1955) than wide (1841): the long side fits, zero columns pad the sides
    assert float(grey[:, [0, -1]].abs().max()) < 1e-5 and float(grey[:, 1:-1].std(0).min()) > 0
    with torch.no_grad():
        same_embeddings(pipe.model.encode_image(x[None]).embeds, ref.visual(x[None]))


def test_chexzero_zero_shot_is_the_positive_negative_pair(tmp_path, chexzero, clip_bpe_file, radiograph):
    """CheXzero's rule with its own prompts: per finding exp(pos) / (exp(pos) + exp(neg)) of
    the "{}" / "no {}" pair (here at the model's scale; CheXzero's has none, same ranking)."""
    import medvl

    ref, path = chexzero
    pipe = medvl.load(import_model(path, tmp_path / "m", tokenizer=clip_bpe_file))
    result = pipe.classify(radiograph)
    assert result.prompt_set == "chexzero" and result.scoring == "softmax"
    x = pipe.prepare(radiograph)[None]
    simple = SimpleTokenizer(clip_bpe_file)
    scale = float(ref.logit_scale.exp())
    with torch.no_grad():
        img = torch.nn.functional.normalize(ref.visual(x), dim=-1)[0]
        for finding, name in (("pleural_effusion", "pleural effusion"), ("cardiomegaly", "cardiomegaly")):
            pair = torch.tensor([simple(name, 32), simple("no " + name, 32)])
            txt = torch.nn.functional.normalize(ref.encode_text(pair), dim=-1)
            expected = torch.softmax(scale * txt @ img, dim=0)[0]
            assert result.scores[finding] == pytest.approx(float(expected), abs=1e-4)

"""Tokenizers, images and checks shared by the importer tests (all offline, all tiny)."""

from __future__ import annotations

import collections
import gzip
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

CORPUS = [
    "no pneumothorax or pleural effusion", "the lungs are clear", "mild cardiomegaly",
    "small left pleural effusion", "no focal consolidation", "atelectasis at the lung bases",
    "heart size is normal", "there is pulmonary edema", "no acute cardiopulmonary process",
]


def _train_merges(words: list[str], n: int) -> list[tuple[str, str]]:
    """A few BPE merges learned from ``words`` (CLIP marks a word's last symbol with </w>)."""
    vocab = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges: list[tuple[str, str]] = []
    for _ in range(n):
        pairs: collections.Counter = collections.Counter()
        for word, count in vocab.items():
            for a, b in itertools.pairwise(word):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, count in vocab.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        vocab = merged
    return merges


@pytest.fixture(scope="session")
def clip_bpe_file(tmp_path_factory) -> Path:
    """A tiny BPE merges file in OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` format."""
    words = " ".join(CORPUS).split()
    merges = _train_merges(words, 60)
    path = tmp_path_factory.mktemp("bpe") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return path


@pytest.fixture(scope="session")
def clip_tokenizer(clip_bpe_file, tmp_path_factory) -> Path:
    """A CLIP tokenizer directory converted from the tiny BPE file."""
    from medvl.models.importers.clip_bpe import convert_bpe

    return convert_bpe(clip_bpe_file, tmp_path_factory.mktemp("clip-tok"))


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory) -> Path:
    """The WordPiece tokenizer shipped with all-MiniLM-L6-v2 (a BERT uncased vocabulary)."""
    from medvl.models.text_base import minilm_path

    out = tmp_path_factory.mktemp("bert-tok")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_path() / name).exists():
            shutil.copy(minilm_path() / name, out / name)
    return out


@pytest.fixture(scope="session")
def siglip_tokenizer(tmp_path_factory) -> Path:
    """A SentencePiece-style (Unigram, ``▁`` word marks) fast tokenizer that returns no
    attention mask, like SigLIP's: the model was trained on padded input without one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_input_names=["input_ids"])
    out = tmp_path_factory.mktemp("siglip-tok")
    fast.save_pretrained(out)
    return out


def write_processor(directory: Path, **fields) -> None:
    """A ``preprocessor_config.json`` as Hugging Face image processors write it."""
    (directory / "preprocessor_config.json").write_text(json.dumps(fields), "utf-8")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``(N, D)`` batches."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture
def same_embeddings():
    """Assert two embedding batches agree (cosine >= 0.9999 per row, the issue's bar)."""
    def check(ours: torch.Tensor, reference: torch.Tensor) -> None:
        assert ours.shape == reference.shape
        sims = cosine(ours, reference)
        assert bool((sims >= 0.9999).all()), f"cosine {sims.tolist()}"
    return check


@pytest.fixture
def texts() -> list[str]:
    """Two short reports of different lengths (padding must not change either)."""
    return ["No pneumothorax or pleural effusion.", "Mild cardiomegaly; the lungs are clear."]


@pytest.fixture
def processor_json():
    """Writer of ``preprocessor_config.json`` files."""
    return write_processor


@pytest.fixture(scope="session")
def radiograph() -> str:
    """The real PA chest radiograph pydicom-data ships (CR, MONOCHROME1, 1955 x 1841)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return str(path)


@pytest.fixture
def source_input(radiograph):
    """Run the real radiograph through an imported model directory's preprocessing and
    check it is the source model's input: ``in_channels`` identical channels, the
    source's grid, its mean/std (undone, the values are the [0, 1] window)."""
    def run(model_dir, *, size: int, mean: list[float], std: list[float]) -> tuple[object, torch.Tensor]:
        import medvl

        pipe = medvl.load(model_dir)
        x = pipe.prepare(radiograph)
        assert tuple(x.shape) == (len(mean), size, size)
        m = torch.tensor(mean)[:, None, None]
        s = torch.tensor(std)[:, None, None]
        grey = x * s + m
        assert torch.allclose(grey, grey[:1].expand_as(grey), atol=1e-5)  # grey repeated to RGB
        assert float(grey.min()) >= -1e-5 and float(grey.max()) <= 1 + 1e-5
        assert float(grey.std()) > 0.05  # an image, not a constant
        return pipe, x
    return run


@pytest.fixture(scope="session")
def siglip_spm_tokenizer(tmp_path_factory) -> Path:
    """transformers' own SiglipTokenizer (slow, SentencePiece) on a model trained here:
    the tokenizer class MedSigLIP ships, with no attention mask and no word map."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    out = tmp_path_factory.mktemp("siglip-spm")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=50,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    (out / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(out / "spiece.model")).save_pretrained(out)
    return out

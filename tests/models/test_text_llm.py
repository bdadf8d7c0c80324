"""Decoder LLMs as embedders: tiny random Llama / Qwen2 with a BPE tokenizer trained here."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError
from medvl.models import MedVLModel, build_model

CORPUS = [
    "No pneumothorax or pleural effusion.", "Mild cardiomegaly with pulmonary edema.",
    "The lungs are clear.", "Right lower lobe consolidation concerning for pneumonia.",
    "Represent the report for retrieval:", "Normal chest radiograph.",
] * 20


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A byte-level BPE tokenizer (as Llama 3 / Qwen use), trained offline on a toy corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    out = tmp_path_factory.mktemp("bpe")
    fast.save_pretrained(out)
    return str(out)


def _cfg(bpe_dir, **text):
    base = {"name": "llm", "tokenizer": bpe_dir, "hidden_size": 32, "num_layers": 2,
            "num_heads": 2, "intermediate_size": 64, "max_length": 48}
    base.update(text)
    return {"embed_dim": 16, "image": {"name": "resnet10", "width": 8}, "text": base}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_instruction_is_excluded_from_words_and_pooling(bpe_dir, arch):
    torch.manual_seed(0)
    model = build_model(_cfg(bpe_dir, architecture=arch,
                             instruction="Represent the report for retrieval: ")).eval()
    tokens = model.tokenize(["No pneumothorax.", "The lungs are clear."])
    n_instr = int((tokens["word_ids"][0] < 0).sum())
    assert n_instr >= 5  # the instruction's tokens carry no word id
    with torch.no_grad():
        out = model.encode_text(**tokens)
    assert out.words == [["No", "pneumothorax", "."], ["The", "lungs", "are", "clear", "."]]
    assert out.local_mask.sum(1).tolist() == [3, 5]
    assert out.embeds.shape == (2, 16) and out.embeds.dtype == torch.float32
    with torch.no_grad():  # words recovered from token strings give the same result
        again = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert again.words == out.words
    assert torch.allclose(again.embeds, out.embeds, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bidirectional_attention_lets_early_words_see_later_ones(bpe_dir, bidirectional):
    torch.manual_seed(0)
    model = build_model(_cfg(bpe_dir, bidirectional=bidirectional)).eval()
    with torch.no_grad():
        a = model.embed_texts(["The lungs are clear."])
        b = model.embed_texts(["The lungs are edema."])
    first_word_change = (a.local_embeds[0, 0] - b.local_embeds[0, 0]).abs().max().item()
    if bidirectional:
        assert first_word_change > 1e-4
    else:  # causal: "The" cannot see the last word
        assert first_word_change < 1e-5


def test_padding_does_not_change_a_report_embedding(bpe_dir):
    torch.manual_seed(0)
    model = build_model(_cfg(bpe_dir)).eval()
    with torch.no_grad():
        alone = model.embed_texts(["Normal chest radiograph."])
        padded = model.embed_texts(["Normal chest radiograph.",
                                    "Right lower lobe consolidation concerning for pneumonia."])
    assert torch.allclose(alone.embeds[0], padded.embeds[0], atol=1e-5)


# peft asks transformers a deprecated question; not ours to fix
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_trains_only_adapters_and_round_trips(bpe_dir, tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg(bpe_dir, lora_rank=4))
    trainable = [n for n, p in model.text_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.text_encoder.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model.embed_texts(["Mild cardiomegaly."])
    out.embeds.square().sum().backward()
    opt.step()
    changed = [n for n, p in model.text_encoder.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = MedVLModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model.embed_texts(["Mild cardiomegaly."]).embeds,
                           loaded.embed_texts(["Mild cardiomegaly."]).embeds)


def test_bfloat16_tower(bpe_dir):
    torch.manual_seed(0)
    model = build_model(_cfg(bpe_dir, dtype="bfloat16")).eval()
    assert next(model.text_encoder.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = model.embed_texts(["No pneumothorax."])
    assert out.embeds.dtype == torch.float32 and torch.isfinite(out.embeds).all()


def test_lora_targets_are_checked(bpe_dir):
    with pytest.raises(ConfigError, match="model.text.lora_targets"):
        build_model(_cfg(bpe_dir, lora_rank=2, lora_targets=["query_proj_x"]))


def test_local_decoder_directory_loads_as_llm_and_is_refused_as_hf(bpe_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from medvl.errors import ModelError

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2,
                                       intermediate_size=64)).eval()
    ref.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = build_model({"embed_dim": 8, "image": {"name": "resnet10", "width": 8},
                         "text": {"name": "llm", "path": str(tmp_path), "bidirectional": False}}).eval()
    tokens = model.tokenize(["The lungs are clear."])
    with torch.no_grad():
        pooled = model.text_encoder(**tokens).pooled
        hidden = ref.model(input_ids=tokens["input_ids"]).last_hidden_state
    assert torch.allclose(pooled[0], hidden[0, tokens["word_ids"][0] >= 0].mean(0), atol=1e-5)
    with pytest.raises(ModelError, match="'llm' for decoder models"):
        build_model({"image": {"name": "resnet10", "width": 8},
                     "text": {"name": "hf", "path": str(tmp_path)}})

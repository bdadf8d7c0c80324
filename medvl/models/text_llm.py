"""Decoder LLMs as report embedders (LLM2Vec / LLM2CLIP style).

The report is prefixed with an optional instruction ("Represent this chest X-ray
report for retrieval: ") that conditions the model but is excluded from pooling:
the report embedding is the mean of the report tokens' last hidden states. Where
the architecture allows (Llama, Qwen2, Mistral, ... in transformers), the causal
mask is replaced by a padding-only mask so every token sees the whole report, as
LLM2Vec does before its contrastive adaptation. LoRA adapters (peft) make the
tower trainable at a small cost; ``dtype: bfloat16`` halves its memory.
"""

from __future__ import annotations

from typing import Any

import torch

from medvl.errors import ModelError
from medvl.models.config import TextConfig
from medvl.models.text_base import (
    TextEncoder,
    TextFeatures,
    load_tokenizer,
    merge_pieces,
    minilm_path,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_LORA_TARGETS = ["q_proj", "v_proj"]


def _prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        # decoders often ship without a pad token; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


class DecoderText(TextEncoder):
    """A decoder-only transformer (``LlamaModel``, ``Qwen2Model``, ...) as the text tower.

    Args:
        cfg: the text section.
        model: the base decoder (no LM head).
        tokenizer: its fast tokenizer.
    """

    def __init__(self, cfg: TextConfig, model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = _prepare_tokenizer(tokenizer)
        self.out_dim = int(model.config.hidden_size)
        self.bidirectional = cfg.bidirectional and _set_bidirectional(model)
        model.to(_DTYPES[cfg.dtype])
        # freeze / LoRA: applied by MedVLModel (medvl.models.tuning) after any weights load
        self.lora_targets = list(_LORA_TARGETS)
        self.model = model
        self.check_max_length()

    def train(self, mode: bool = True) -> DecoderText:
        super().train(mode)
        if self.cfg.freeze and self.cfg.lora_rank == 0:
            self.model.eval()
        return self

    def vocab_size(self) -> int:
        return int(self._base().config.vocab_size)

    def max_positions(self) -> int:
        return int(getattr(self._base().config, "max_position_embeddings", 0) or self.cfg.max_length)

    def _base(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def hf_config(self) -> dict[str, Any]:
        return self._base().config.to_dict()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise ``instruction + report``; instruction tokens get ``word_ids == -1``.

        ``max_length`` counts the instruction too.
        """
        return self._encode(self._check_texts(texts), prefix=self.cfg.instruction)

    def instruction(self) -> str:
        return self.cfg.instruction

    def _mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Padding-only additive mask ``(B, 1, L, L)`` (no causal triangle)."""
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        length = attention_mask.shape[1]
        mask = torch.zeros(attention_mask.shape[0], 1, length, length, dtype=dtype,
                           device=attention_mask.device)
        return mask.masked_fill(~keep, torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> TextFeatures:
        """Encode a token batch; the report embedding is the mean over report tokens."""
        del token_type_ids  # decoders have a single segment
        self.check_ids(input_ids, attention_mask)
        if word_ids is None:
            word_ids = self.fallback_word_ids(input_ids, attention_mask)
        mask = attention_mask
        if self.bidirectional:
            mask = self._mask(attention_mask, _DTYPES[self.cfg.dtype])
        out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state.float()  # (B, L, H)
        report = (word_ids >= 0).to(hidden.dtype).unsqueeze(-1)  # instruction/special/pad out
        pooled = (hidden * report).sum(1) / report.sum(1).clamp(min=1.0)
        n_words = max(int(word_ids.max()) + 1, 1)
        tokens, wmask = merge_pieces(hidden, word_ids, n_words)
        return TextFeatures(pooled=pooled, tokens=tokens, mask=wmask,
                            words=self.words_of(input_ids, word_ids, n_words))


def _set_bidirectional(model: Any) -> bool:
    """Turn off the causal flag of every attention module; False if there is none."""
    found = False
    for module in model.modules():
        if hasattr(module, "is_causal") and module is not model:
            module.is_causal = False
            found = True
    return found


def _random_decoder(cfg: TextConfig, vocab_size: int, pad_id: int) -> Any:
    from transformers import AutoModel, LlamaConfig, Qwen2Config

    kind = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.architecture]
    config = kind(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=max(cfg.max_length, 8),
        pad_token_id=pad_id,
    )
    config._attn_implementation = "sdpa"
    return AutoModel.from_config(config)


def build_llm(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> DecoderText:
    """A decoder LLM embedder: ``path`` (local directory or hub name) or a tiny random one."""
    from transformers import AutoConfig, AutoModel

    if saved is not None:
        hf = dict(saved["hf_config"])
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        config._attn_implementation = "sdpa"
        return DecoderText(cfg, AutoModel.from_config(config),
                           load_tokenizer(saved["tokenizer_dir"], field="tokenizer"))
    if cfg.path:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.path)
        try:
            model = AutoModel.from_pretrained(cfg.path, dtype=_DTYPES[cfg.dtype])
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all name the path
            raise ModelError(
                f"cannot load a decoder model: {type(exc).__name__}: {exc}".splitlines()[0], path=cfg.path,
                field="model.text.path", expected="a local Hugging Face model directory",
            ) from None
        return DecoderText(cfg, model, tokenizer)
    tokenizer = _prepare_tokenizer(load_tokenizer(cfg.tokenizer or minilm_path()))
    model = _random_decoder(cfg, len(tokenizer), tokenizer.pad_token_id or 0)
    return DecoderText(cfg, model, tokenizer)

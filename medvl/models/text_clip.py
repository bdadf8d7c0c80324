"""The text towers of CLIP and SigLIP, each with its own pooling.

* CLIP (``CLIPTextModel``): a causal transformer; the report feature is the final
  layer-normed state of the end-of-text token (CLIP's ``pooler_output``), which CLIP's
  ``text_projection`` (medvl's text head) maps into the joint space.
* SigLIP (``SiglipTextModel``): the report feature is the last position's state through
  the tower's own linear ``head`` (its ``pooler_output``); SigLIP has no separate
  projection. It was trained on text padded to ``max_length`` (64 for MedSigLIP) and
  without an attention mask, so this tower always pads to ``max_length`` and gives the
  model no mask.

Both return per-word features (the final states, word pieces merged) for token-level
losses, like every medvl text tower.
"""

from __future__ import annotations

from typing import Any

import torch

from medvl.errors import ConfigError, ModelError
from medvl.models.config import TextConfig
from medvl.models.text_base import (
    TextEncoder,
    TextFeatures,
    load_tokenizer,
    merge_pieces,
)


class CLIPFamilyText(TextEncoder):
    """A CLIP or SigLIP text tower.

    Args:
        cfg: the text section (``max_length`` counts the special tokens).
        model: ``CLIPTextModel`` or ``SiglipTextModel``.
        tokenizer: its tokenizer.
        kind: ``clip`` or ``siglip``.
    """

    def __init__(self, cfg: TextConfig, model: Any, tokenizer: Any, kind: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.out_dim = int(model.config.hidden_size)
        self.lora_targets = ["q_proj", "v_proj"]
        if kind == "siglip":
            self.padding = "max_length"
        # SigLIP (big_vision, MedSigLIP) was trained on max_length-padded text without a
        # mask; transformers >= 5's SiglipTokenizer returns one anyway, which would change
        # the last position's state, so the model never sees it (the word mask still does)
        self.pass_mask = kind == "clip"
        self.check_max_length()

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def max_positions(self) -> int:
        return int(self.model.config.max_position_embeddings)

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
            input_ids: ``(B, L)``; SigLIP input shorter than ``max_length`` is padded
                to it, as SigLIP was trained.
            attention_mask: ``(B, L)`` 1 for real tokens.
            word_ids: ``(B, L)`` word of each token (``-1`` none); recovered from the
                tokens when omitted.
            token_type_ids: ignored (single segment).
        """
        del token_type_ids
        self.check_ids(input_ids, attention_mask)
        if word_ids is None:
            word_ids = self.fallback_word_ids(input_ids, attention_mask)
        if self.kind == "siglip" and input_ids.shape[1] < self.cfg.max_length:
            extra = self.cfg.max_length - input_ids.shape[1]
            pad_id = self.tokenizer.pad_token_id or 0
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=pad_id)
            attention_mask = torch.nn.functional.pad(attention_mask, (0, extra), value=0)
            word_ids = torch.nn.functional.pad(word_ids, (0, extra), value=-1)
        out = self.model(input_ids=input_ids,
                         attention_mask=attention_mask if self.pass_mask else None)
        hidden = out.last_hidden_state.float()  # (B, L, H), after the final layer norm
        n_words = max(int(word_ids.max()) + 1, 1)
        tokens, mask = merge_pieces(hidden, word_ids, n_words)
        return TextFeatures(pooled=out.pooler_output.float(), tokens=tokens, mask=mask,
                            words=self.words_of(input_ids, word_ids, n_words))


def _build(kind: str, cfg: TextConfig, saved: dict[str, Any] | None) -> CLIPFamilyText:
    import transformers
    from transformers import AutoConfig

    cls_name, config_name = {"clip": ("CLIPTextModel", "CLIPTextConfig"),
                             "siglip": ("SiglipTextModel", "SiglipTextConfig")}[kind]
    if saved is not None:
        hf = dict(saved["hf_config"])
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        config = getattr(config, "text_config", None) or config
        tokenizer = load_tokenizer(saved["tokenizer_dir"], field="tokenizer")
        config._attn_implementation = "sdpa"
        return CLIPFamilyText(cfg, getattr(transformers, cls_name)(config), tokenizer, kind)
    if not cfg.path:
        raise ConfigError(f"the '{cfg.name}' text tower needs a model directory",
                          field="model.text.path",
                          expected=f"a local {kind.upper()} model directory, or 'medvl model import'")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.path)
    try:
        config = getattr(transformers, config_name).from_pretrained(cfg.path)
        model = getattr(transformers, cls_name).from_pretrained(cfg.path, config=config)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; report them all as one
        lines = str(exc).strip().splitlines()
        raise ModelError(f"transformers cannot load it: {type(exc).__name__}: "
                         f"{lines[0] if lines else ''}", path=cfg.path, field="model.text.path",
                         expected=f"a local {kind.upper()} model directory") from None
    return CLIPFamilyText(cfg, model, tokenizer, kind)


def build_clip_text(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> CLIPFamilyText:
    """CLIP's text tower from ``cfg.path`` (a ``CLIPModel`` directory gives its text half)."""
    return _build("clip", cfg, saved)


def build_siglip_text(cfg: TextConfig, *, saved: dict[str, Any] | None = None) -> CLIPFamilyText:
    """SigLIP's text tower from ``cfg.path`` (a ``SiglipModel`` directory gives its text half)."""
    return _build("siglip", cfg, saved)

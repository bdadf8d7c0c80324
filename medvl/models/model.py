"""The dual encoder: an image tower, a text tower, projection heads and a temperature."""

from __future__ import annotations

import math
from os import PathLike
from typing import Any

import torch
from torch import nn

from medvl.config import from_dict, to_dict
from medvl.errors import ModelError
from medvl.models.config import ModelConfig
from medvl.models.heads import build_head
from medvl.models.outputs import EncoderOutput


class MedVLModel(nn.Module):
    """Image and report encoders projected into one embedding space.

    Build one with :func:`medvl.models.build_model` (from a config section) or
    :meth:`from_pretrained` (from a saved directory).

    Args:
        cfg: the validated model section.
        load_pretrained: initialise towers from their configured weights (MiniLM,
            local weight files); False when a saved state dict will be loaded over them.
        saved_text: architecture of a saved text tower (``config.json``), so loading
            a model directory needs neither the original weights nor the network.
        saved_image: architecture of a saved checkpoint-shaped image encoder (``hf-*``).
        init_state: weights loaded (strictly) before the towers are frozen or get LoRA
            adapters: how a model starts from a saved or imported directory
            (``model.init_from``).

    Attributes:
        config: the model section as a plain dict (``to_dict`` of :class:`ModelConfig`).
        logit_scale: log of the inverse temperature (init ``log(1/0.07)``); users
            clamp ``logit_scale.exp()`` at 100.
        logit_bias: SigLIP's learned bias of the image-text logit (only when
            ``logit_bias_init`` is set).
        zeroshot: the source model's zero-shot rule (``{"scoring", "ensemble",
            "prompts"}``), saved as the top-level ``zeroshot`` block of
            ``config.json``; None = medvl's default.
        provenance: where an imported model came from (``provenance.json``); None for
            models trained here from scratch.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        load_pretrained: bool = True,
        saved_text: dict[str, Any] | None = None,
        saved_image: dict[str, Any] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        from medvl.models.factory import build_image_encoder, build_text_encoder
        from medvl.models.tuning import apply_image_tuning, apply_text_tuning

        self.cfg = cfg
        self.image_encoder = build_image_encoder(
            cfg.image, load_pretrained=load_pretrained, saved=saved_image
        )
        self.text_encoder = build_text_encoder(cfg.text, saved=saved_text)
        d = cfg.embed_dim
        image_kind = cfg.image_head or cfg.head
        text_kind = cfg.text_head or cfg.head
        image_dim, text_dim = self.image_encoder.out_dim, self.text_encoder.out_dim
        field = "model.image_head" if cfg.image_head else "model.head"
        self.image_head = build_head(image_kind, image_dim, d, bias=cfg.head_bias, field=field)
        self.image_local_head = build_head(image_kind, image_dim, d, bias=cfg.head_bias, field=field)
        field = "model.text_head" if cfg.text_head else "model.head"
        self.text_head = build_head(text_kind, text_dim, d, bias=cfg.head_bias, field=field)
        self.text_local_head = build_head(text_kind, text_dim, d, bias=cfg.head_bias, field=field)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(cfg.logit_scale_init)), requires_grad=cfg.learn_logit_scale
        )
        if cfg.logit_bias_init is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init)),
                                           requires_grad=cfg.learn_logit_scale)
        if init_state is not None:
            self._load_init_state(init_state)
        apply_image_tuning(self.image_encoder, cfg.image)
        apply_text_tuning(self.text_encoder)
        self.zeroshot: dict[str, Any] | None = None
        self.provenance: dict[str, Any] | None = None
        self._text_cache: Any = None  # built on first use, after any weights are loaded

    def _load_init_state(self, state: dict[str, torch.Tensor]) -> None:
        from medvl.errors import CheckpointError
        from medvl.models.saving import state_mismatch

        mismatch = state_mismatch(self.state_dict(), state)
        if mismatch:
            raise CheckpointError(
                "the weights of model.init_from do not fit this model: " + mismatch,
                path=self.cfg.init_from, field="model.init_from",
                expected="overrides that keep the architecture (freeze, lora_*, ...), "
                "and a directory saved without LoRA adapters",
            )
        super().load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> MedVLModel:
        """As :meth:`torch.nn.Module.train`; a frozen image encoder stays in eval mode."""
        from medvl.models.tuning import frozen_backbone

        super().train(mode)
        frozen = frozen_backbone(self.image_encoder, self.cfg.image)
        if frozen is not None:
            frozen.eval()
        return self

    @property
    def config(self) -> dict[str, Any]:
        """The model section as a plain dict."""
        return to_dict(self.cfg)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.logit_scale.device

    # -- text ---------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise reports: ``input_ids``, ``attention_mask``, ``word_ids`` (CPU tensors).

        Raises:
            ReportError: an empty report, or one over ``max_length`` tokens when
                ``model.text.truncation`` is ``error`` (by default it is truncated).
        """
        return self.text_encoder.tokenize(texts)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any
    ) -> EncoderOutput:
        """Encode tokenised reports.

        Args:
            input_ids: ``(B, L)``.
            attention_mask: ``(B, L)``.
            **kw: ``word_ids`` from :meth:`tokenize` (recommended: exact word
                boundaries) and ``token_type_ids``; other keys are ignored.

        Returns:
            ``embeds (B, D)``, ``local_embeds (B, W, D)`` per word, ``local_mask
            (B, W)``, ``words``, ``attention (B, W)`` or None; ``grid`` is None.
            With ``model.text.cache_dir`` set (frozen tower), the tower's features
            come from the on-disk cache and only the projection heads run.
        """
        extra = {k: kw[k] for k in ("word_ids", "token_type_ids") if kw.get(k) is not None}
        if self.cfg.text.cache_dir:
            feats = self._cache().features(input_ids, attention_mask, extra.get("word_ids"))
        else:
            feats = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return EncoderOutput(
            embeds=self.text_head(feats.pooled),
            local_embeds=self.text_local_head(feats.tokens),
            local_mask=feats.mask,
            grid=None,
            attention=feats.attention,
            words=feats.words,
        )

    def embed_texts(self, texts: list[str]) -> EncoderOutput:
        """Tokenise and encode reports on the model's device."""
        tokens = self.tokenize(texts)
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self.encode_text(**tokens)

    def _cache(self) -> Any:
        if self._text_cache is None:
            from medvl.models.text_cache import TextFeatureCache

            assert self.cfg.text.cache_dir, "only called when model.text.cache_dir is set"
            self._text_cache = TextFeatureCache(self.cfg.text.cache_dir, self.text_encoder)
        return self._text_cache

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; also drops the text cache handle,
        whose key depends on the text tower's weights."""
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- image --------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> EncoderOutput:
        """Encode a batch of images ``(B, C, H, W)`` or volumes ``(B, C, D, H, W)``.

        Raises:
            ModelError: wrong number of dims or channels, a volume given to a 2D-only
                tower, or an image smaller than the encoder's stride.
        """
        self.image_encoder.check_input(image)
        feats = self.image_encoder(image)
        mask = feats.mask
        if mask is None:
            mask = torch.ones(feats.tokens.shape[:2], dtype=torch.bool, device=feats.tokens.device)
        return EncoderOutput(
            embeds=self.image_head(feats.pooled),
            local_embeds=self.image_local_head(feats.tokens),
            local_mask=mask,
            grid=feats.grid,
            attention=feats.attention,
        )

    def forward(self, image: torch.Tensor, **tokens: torch.Tensor) -> tuple[EncoderOutput, EncoderOutput]:
        """Encode an image batch and its tokenised reports (for DDP wrappers)."""
        return self.encode_image(image), self.encode_text(**tokens)

    # -- persistence ----------------------------------------------------------------
    def save_pretrained(self, directory: str | PathLike[str], *, card: dict[str, Any] | None = None,
                        preprocessing: Any = None, training: dict[str, Any] | None = None) -> None:
        """Write ``config.json``, ``model.safetensors``, tokenizer files and ``README.md``.

        Args:
            directory: target folder (created; files are replaced atomically).
            card: extra model-card fields (``training_data``, ``metrics``, ...).
            preprocessing: a ``medvl.inference.Preprocessing``, written as
                ``preprocessing.json`` (``medvl.load`` needs it).
            training: how it was trained (``config.json``'s ``"training"``).
        """
        from medvl.models.saving import save_model

        save_model(self, directory, card=card, preprocessing=preprocessing, training=training)

    @classmethod
    def from_pretrained(
        cls, directory: str | PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> MedVLModel:
        """Load a directory written by :meth:`save_pretrained`, with no network.

        Raises:
            CheckpointError: missing files, or weights that do not match the config.
        """
        from medvl.models.saving import load_model

        return load_model(cls, directory, map_location=map_location)


def build_model(model_cfg: dict[str, Any] | ModelConfig | None) -> MedVLModel:
    """Build a :class:`MedVLModel` from the ``model:`` config section.

    Raises:
        ConfigError: an invalid section (names the dotted key).
        ModelError: configured weights or tokenizer that cannot be loaded.
    """
    if isinstance(model_cfg, ModelConfig):
        if model_cfg.init_from:
            from medvl.models.saving import start_from_directory

            defaults = to_dict(ModelConfig())
            return start_from_directory(MedVLModel, _changed(to_dict(model_cfg), defaults))
        return MedVLModel(model_cfg)
    if model_cfg and model_cfg.get("init_from"):
        from medvl.models.saving import start_from_directory

        return start_from_directory(MedVLModel, dict(model_cfg))
    return MedVLModel(from_dict(ModelConfig, model_cfg, where="model"))


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that differ from ``defaults`` (nested sections too)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        base = defaults.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            sub = _changed(value, base)
            if sub:
                out[key] = sub
        elif value != base:
            out[key] = value
    return out


__all__ = ["MedVLModel", "ModelError", "build_model"]

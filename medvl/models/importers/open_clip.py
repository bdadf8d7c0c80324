"""open_clip checkpoints with a timm ViT image tower and a Hugging Face text tower (BiomedCLIP).

Facts (open_clip ``timm_model.py``, ``hf_model.py``, ``factory.py``, ``transform.py``;
timm's ``VisionTransformer``; BiomedCLIP's ``open_clip_config.json``):

* ``open_clip_config.json`` holds ``model_cfg`` (``embed_dim``, ``vision_cfg`` with
  ``timm_model_name``, ``timm_pool``, ``timm_proj``, ``timm_proj_bias``, ``image_size``;
  ``text_cfg`` with ``hf_model_name``, ``hf_proj_type``, ``hf_pooler_type``,
  ``context_length``) and ``preprocess_cfg`` (``mean``, ``std``, ``interpolation``,
  ``resize_mode``); BiomedCLIP: ViT-B/16 at 224, PubMedBERT, 512-d, context 256, OpenAI
  mean/std, bicubic, shortest side + centre crop.
* image: with ``timm_proj`` ``linear`` and an empty ``timm_pool`` the timm trunk keeps
  its default pooling ([CLS] after the final norm for ViTs) and ``visual.head.proj``
  (bias-free unless ``timm_proj_bias``) projects it. timm's ViT is pre-norm with a fused
  ``attn.qkv``, exact GELU and LayerNorm eps 1e-6; heads are 64 wide: it maps one-to-one
  onto transformers' ``ViTModel`` (qkv split into query/key/value).
* text: ``text.transformer`` is the Hugging Face model; the attention mask is
  ``ids != pad``; ``cls_last_hidden_state_pooler`` takes the [CLS] state (``mean_pooler``
  the masked mean); ``text.proj`` is ``mlp`` (Linear-GELU-Linear, hidden
  ``(width + embed) // 2``, no biases) or ``linear`` (no bias).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import torch

from medvl.errors import CheckpointError
from medvl.models.config import ImageConfig, ModelConfig, TextConfig
from medvl.models.importers.base import (
    Imported,
    assign,
    head_weights,
    hf_from_state,
    load_state,
    new_model,
    prefixed,
    read_json,
    take,
    tokenizer_dir,
)
from medvl.models.importers.bert import load_bert_weights

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.pt")
_POOLERS: dict[str, Literal["cls", "mean"]] = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean"}
_RESIZE = {"shortest": "crop", "longest": "pad", "squash": "stretch"}


def timm_vit_to_hf(trunk: dict[str, torch.Tensor], *, source: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """A transformers ``ViTConfig`` and ``ViTModel`` weights (published layout) for a timm ViT.

    Raises:
        CheckpointError: parts of timm's ViT family this mapping does not cover (layer
            scale, register tokens, a classifier norm).
    """
    from transformers import ViTConfig

    unsupported = sorted(k for k in trunk if re.search(r"\.ls[12]\.|^reg_token|^fc_norm\.weight|^attn_pool", k))
    if unsupported:
        raise CheckpointError(f"timm ViT variant not supported: {unsupported[0]}", path=source,
                              expected="a plain timm ViT (vit_base_patch16_224 and kin)")
    try:
        patch_w = trunk["patch_embed.proj.weight"]  # (D, C, p, p)
        pos = trunk["pos_embed"]  # (1, 1 + N, D)
        fc1 = trunk["blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise CheckpointError(f"not a timm ViT trunk: {exc.args[0]} is missing", path=source) from None
    width, channels, patch = int(patch_w.shape[0]), int(patch_w.shape[1]), int(patch_w.shape[-1])
    grid = round((pos.shape[1] - 1) ** 0.5)
    layers = len({int(m.group(1)) for k in trunk if (m := re.match(r"blocks\.(\d+)\.", k))})
    config = ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                       intermediate_size=int(fc1.shape[0]), image_size=grid * patch, patch_size=patch,
                       num_channels=channels, qkv_bias="blocks.0.attn.qkv.bias" in trunk,
                       layer_norm_eps=1e-6, hidden_act="gelu")
    out = {
        "embeddings.cls_token": trunk["cls_token"],
        "embeddings.position_embeddings": pos,
        "embeddings.patch_embeddings.projection.weight": patch_w,
        "embeddings.patch_embeddings.projection.bias": trunk["patch_embed.proj.bias"],
        "layernorm.weight": trunk["norm.weight"],
        "layernorm.bias": trunk["norm.bias"],
    }
    for i in range(layers):
        s, d = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                     ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                     ("mlp.fc2", "output.dense")):
            for p in ("weight", "bias"):
                out[f"{d}{b}.{p}"] = trunk[f"{s}{a}.{p}"]
        for p in ("weight", "bias"):
            if f"{s}attn.qkv.{p}" in trunk:
                q, k, v = trunk[f"{s}attn.qkv.{p}"].chunk(3, dim=0)
                out[f"{d}attention.attention.query.{p}"] = q
                out[f"{d}attention.attention.key.{p}"] = k
                out[f"{d}attention.attention.value.{p}"] = v
    used = {k for k in trunk if k.startswith("blocks.")} | {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    extra = sorted(set(trunk) - used)
    if extra:
        raise CheckpointError(f"{len(extra)} image weights have no place (e.g. visual.trunk.{extra[0]})",
                              path=source, expected="a timm ViT trunk reset to no classifier")
    return config, out


def find_files(src: Path, config: Path | None) -> tuple[Path, Path]:
    """The weights file and ``open_clip_config.json`` of ``src`` (a directory or a file)."""
    src = Path(src)
    if src.is_dir():
        weights = next((src / n for n in WEIGHT_NAMES if (src / n).is_file()), None)
        if weights is None:
            raise CheckpointError("no open_clip weights in the directory", path=src,
                                  expected=" or ".join(WEIGHT_NAMES))
        cfg_path = Path(config) if config else src / CONFIG_NAME
    else:
        weights = src
        cfg_path = Path(config) if config else src.parent / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME}", path=cfg_path, field="--config",
                              expected="the model's open_clip_config.json (it names the towers)")
    return weights, cfg_path


def import_open_clip(src: Path, *, workdir: Path | None = None, tokenizer: Path | None = None,
                     config: Path | None = None, text_config: Path | None = None) -> Imported:
    """Import an open_clip checkpoint with BiomedCLIP's layout.

    Args:
        src: the hub directory (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``
            + tokenizer files) or the weights file.
        workdir: unused (the same signature as the other importers).
        tokenizer: tokenizer directory when ``src`` has none (the text model's own).
        config: ``open_clip_config.json`` when it is not beside the weights.
        text_config: the text model's ``config.json`` (or its directory); by default
            the BERT architecture is read off the weights.

    Raises:
        CheckpointError: another layout (non-timm or non-ViT image tower, a pooler or
            projection this mapping does not cover), no tokenizer, weights that do not fit.
    """
    del workdir
    weights, cfg_path = find_files(src, config)
    full = read_json(cfg_path, what="open_clip config")
    model_cfg = full.get("model_cfg", full)
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    timm_name = str(vision.get("timm_model_name") or "")
    if not timm_name.startswith("vit_"):
        raise CheckpointError(f"image tower {timm_name or 'open_clip native'!r} is not supported",
                              path=cfg_path, field="model_cfg.vision_cfg.timm_model_name",
                              expected="a timm ViT (vit_*), as BiomedCLIP")
    if vision.get("timm_pool") not in ("", None, "token") or vision.get("timm_proj") != "linear":
        raise CheckpointError("only the [CLS] token with a linear projection is supported", path=cfg_path,
                              field="model_cfg.vision_cfg.timm_pool/timm_proj",
                              expected="timm_pool '' and timm_proj 'linear'")
    if vision.get("timm_proj_bias"):
        raise CheckpointError("a biased image projection is not supported (text projections have none)",
                              path=cfg_path, field="model_cfg.vision_cfg.timm_proj_bias", expected="false")
    pooler = text.get("hf_pooler_type") or "cls_last_hidden_state_pooler"
    proj = text.get("hf_proj_type") or "linear"
    if pooler not in _POOLERS or proj not in ("mlp", "linear") or not text.get("hf_model_name"):
        raise CheckpointError(f"text pooler {pooler!r} with projection {proj!r} is not supported",
                              path=cfg_path, field="model_cfg.text_cfg",
                              expected="a Hugging Face text tower with "
                              + " or ".join(_POOLERS) + " and an mlp or linear projection")
    state = load_state(weights)
    trunk = take(state, "visual.trunk.")
    vit_config, vit_state = timm_vit_to_hf(trunk, source=weights)
    vit = hf_from_state("ViTModel", vit_config, vit_state, source=weights, what="image tower (timm ViT)",
                        add_pooling_layer=False)
    text_fields = None
    if text_config:
        tc = Path(text_config)
        text_fields = read_json(tc / "config.json" if tc.is_dir() else tc, what="text model config")
    bert = load_bert_weights(take(state, "text.transformer."), source=weights,
                             what="text tower", config=text_fields)
    tok_dir = tokenizer_dir(tokenizer, weights.parent, what="open_clip text tower")
    embed_dim = int(model_cfg.get("embed_dim", 512))
    context = int(text.get("context_length", 77))
    cfg = ModelConfig(
        embed_dim=embed_dim, image_head="linear", text_head="mlp-gelu" if proj == "mlp" else "linear",
        head_bias=False,
        logit_scale_init=math.exp(float(state["logit_scale"])),
        image=ImageConfig(name="hf-vit", in_channels=int(vit_config.num_channels),
                          image_size=int(vit_config.image_size), width=int(vit_config.hidden_size),
                          depth=int(vit_config.num_hidden_layers), patch_size=int(vit_config.patch_size)),
        text=TextConfig(name="hf", path=str(text["hf_model_name"]), pooling=_POOLERS[pooler],
                        max_length=min(context, int(bert.config.max_position_embeddings))),
    )
    model = new_model(cfg, text_hf=bert.config.to_dict(), image_hf=vit.config.to_dict(), tokenizer=tok_dir)
    values: dict[str, Any] = {}
    values.update(prefixed("image_encoder.model.", vit.state_dict()))
    values.update(prefixed("text_encoder.model.", bert.state_dict()))
    values.update(head_weights("image", take(state, "visual.head.")))
    text_proj = take(state, "text.proj.")
    if proj == "mlp":  # nn.Sequential(Linear, GELU, Linear) -> GeluMLPHead.net
        text_proj = {f"net.{k}": v for k, v in text_proj.items()}
    else:
        text_proj = {f"proj.{k}": v for k, v in text_proj.items()}
    values.update(head_weights("text", text_proj))
    values["logit_scale"] = state["logit_scale"].reshape(())
    known = ("visual.trunk.", "visual.head.", "text.transformer.", "text.proj.", "logit_scale")
    extra = sorted(k for k in state if not k.startswith(known))
    if extra:
        raise CheckpointError(f"{len(extra)} weights have no place (e.g. {extra[0]})", path=weights,
                              expected="an open_clip CustomTextCLIP with a timm ViT and an HF text tower")
    assign(model, values, source=weights)

    pre = full.get("preprocess_cfg", {})
    size = vision.get("image_size", vit_config.image_size)
    image = {"in_channels": 3, "image_size": int(size if isinstance(size, int) else size[0]),
             "fit": _RESIZE.get(pre.get("resize_mode", "shortest"), "crop"),
             "resample": "bicubic" if pre.get("interpolation", "bicubic") == "bicubic" else "bilinear",
             "mean": [float(v) for v in pre.get("mean", (0.48145466, 0.4578275, 0.40821073))],
             "std": [float(v) for v in pre.get("std", (0.26862954, 0.26130258, 0.27577711))]}
    return Imported(
        model=model, image=image, text={"expand_abbreviations": False, "lowercase": False},
        zeroshot={"scoring": "classes", "ensemble": "mean"},
        name=Path(src).name if Path(src).is_dir() else weights.stem,
        conversion=("open_clip checkpoint read with torch.load(weights_only=True), without open_clip or "
                    f"timm: the timm {timm_name} trunk mapped onto transformers ViTModel (qkv split into "
                    "query/key/value, LayerNorm eps 1e-6), visual.head.proj as a linear image head, "
                    f"text.transformer as a transformers BertModel ({pooler}), text.proj as a "
                    f"{'mlp-gelu' if proj == 'mlp' else 'linear'} text head."),
        source_files=[weights],
    )

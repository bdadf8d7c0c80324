"""OpenAI CLIP state dicts (ViT towers), the layout of CheXzero's checkpoints.

Facts (OpenAI ``clip/model.py``: ``VisionTransformer``, ``ResidualAttentionBlock``,
``build_model``; CheXzero ``zero_shot.py`` and ``data_process.py``):

* vision: ``conv1`` (no bias) patchifies, ``class_embedding`` is prepended,
  ``positional_embedding`` added, ``ln_pre``, residual blocks (``ln_1``, fused
  ``attn.in_proj`` of ``nn.MultiheadAttention``, ``attn.out_proj``, ``ln_2``,
  ``mlp.c_fc``, QuickGELU, ``mlp.c_proj``), ``ln_post`` on [CLS], then ``@ proj``;
* text: token + positional embeddings, the same blocks under a causal mask,
  ``ln_final``, the state at the end-of-text token (the largest id, ``argmax``), then
  ``@ text_projection``; heads = width / 64 on both sides; LayerNorm eps 1e-5;
* these map one-to-one onto transformers' CLIP (the fused projection split into q, k,
  v; ``proj`` and ``text_projection`` transposed into bias-free linear layers), which
  is how medvl runs them;
* CheXzero: grey radiographs resized (longest side) and zero-padded to 320, repeated to
  3 channels, normalised with mean 101.48761 and std 83.43944 on the 0-255 scale,
  resized to 224 bicubic; zero-shot = softmax of the "{}" vs "no {}" prompt pair per
  finding, on cosine similarities without a temperature.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from medvl.errors import CheckpointError
from medvl.models.config import ImageConfig, ModelConfig, TextConfig
from medvl.models.importers.base import (
    Imported,
    assign,
    hf_from_state,
    load_state,
    new_model,
)
from medvl.models.importers.clip_bpe import clip_tokenizer_dir
from medvl.models.importers.hf_clip import _inner_state

#: the two preprocessing presets of this layout
VARIANTS = ("chexzero", "clip")


def _blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def _map_blocks(state: dict[str, torch.Tensor], src: str, dst: str, n: int) -> dict[str, torch.Tensor]:
    """OpenAI residual blocks -> transformers CLIP encoder layers."""
    out: dict[str, torch.Tensor] = {}
    for i in range(n):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                     ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
            for p in ("weight", "bias"):
                out[f"{d}{b}.{p}"] = state[f"{s}{a}.{p}"]
        for p, t in (("weight", state[f"{s}attn.in_proj_weight"]), ("bias", state[f"{s}attn.in_proj_bias"])):
            q, k, v = t.chunk(3, dim=0)
            out[f"{d}self_attn.q_proj.{p}"] = q
            out[f"{d}self_attn.k_proj.{p}"] = k
            out[f"{d}self_attn.v_proj.{p}"] = v
    return out


def convert_openai_state(state: dict[str, torch.Tensor], *, source: Path, eos_token_id: int,
                         pad_token_id: int, bos_token_id: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A transformers ``CLIPConfig`` and ``CLIPModel`` weights for an OpenAI CLIP state dict.

    Raises:
        CheckpointError: a ResNet image tower (not supported) or missing keys.
    """
    from transformers import CLIPConfig

    if "visual.proj" not in state:
        kind = "a ResNet image tower (ModifiedResNet)" if any(k.startswith("visual.layer1.") for k in state) \
            else "no 'visual.proj'"
        raise CheckpointError(f"not an OpenAI CLIP ViT state dict: {kind}", path=source,
                              expected="visual.conv1/visual.proj and token_embedding keys (ViT-B/32, ...)")
    try:
        width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        embed_dim = state["text_projection"].shape[1]
        context = state["positional_embedding"].shape[0]
        vocab = state["token_embedding.weight"].shape[0]
        text_width = state["ln_final.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"key {exc.args[0]} is missing", path=source,
                              expected="an OpenAI CLIP state dict") from None
    v_layers = _blocks(state, "visual.transformer.resblocks.")
    t_layers = _blocks(state, "transformer.resblocks.")
    config = CLIPConfig(
        projection_dim=int(embed_dim),
        vision_config={"hidden_size": int(width), "intermediate_size": 4 * int(width),
                       "num_hidden_layers": v_layers, "num_attention_heads": int(width) // 64,
                       "image_size": int(patch * grid), "patch_size": int(patch),
                       "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                       "projection_dim": int(embed_dim)},
        text_config={"vocab_size": int(vocab), "hidden_size": int(text_width),
                     "intermediate_size": 4 * int(text_width), "num_hidden_layers": t_layers,
                     "num_attention_heads": int(text_width) // 64,
                     "max_position_embeddings": int(context), "hidden_act": "quick_gelu",
                     "layer_norm_eps": 1e-5, "projection_dim": int(embed_dim),
                     "eos_token_id": int(eos_token_id), "pad_token_id": int(pad_token_id),
                     "bos_token_id": int(bos_token_id)},
    )
    hf: dict[str, torch.Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    hf.update(_map_blocks(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", v_layers))
    hf.update(_map_blocks(state, "transformer.resblocks.", "text_model.encoder.layers.", t_layers))
    return config, hf


def import_openai_clip(src: Path, *, workdir: Path, tokenizer: Path | None = None,
                       variant: str = "chexzero") -> Imported:
    """Import an OpenAI CLIP (ViT) state dict; ``variant`` picks CheXzero's or CLIP's preprocessing.

    Args:
        src: the ``.pt``/``.pth`` state dict (CheXzero's ``best_*.pt``).
        workdir: scratch directory (a converted tokenizer is written there).
        tokenizer: a Hugging Face CLIP tokenizer directory, or OpenAI's
            ``bpe_simple_vocab_16e6.txt.gz`` (shipped in the CLIP and CheXzero repositories).
        variant: ``chexzero`` (grey, padded, CheXzero's mean/std, pos/neg prompt pairs) or
            ``clip`` (shortest side + centre crop, OpenAI mean/std, softmax over classes).

    Raises:
        CheckpointError: not such a state dict, no tokenizer, weights that do not fit.
    """
    from medvl.errors import ConfigError

    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}", field="--variant",
                          expected=" or ".join(VARIANTS))
    src = Path(src)
    state = load_state(src)
    tok_dir = clip_tokenizer_dir(tokenizer, source=src, workdir=workdir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    config, hf_state = convert_openai_state(
        state, source=src, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    extra = sorted(set(state) - _used_keys(state) - {"input_resolution", "context_length", "vocab_size"})
    if extra:
        raise CheckpointError(f"{len(extra)} keys of the state dict have no place (e.g. {extra[0]})",
                              path=src, expected="an OpenAI CLIP ViT state dict")
    hf = hf_from_state("CLIPModel", config, hf_state, source=src, what="OpenAI CLIP")
    vision_cfg, text_cfg = hf.config.vision_config, hf.config.text_config
    cfg = ModelConfig(
        embed_dim=int(config.projection_dim), head="linear", head_bias=False,
        logit_scale_init=math.exp(float(hf.logit_scale.detach())),
        image=ImageConfig(name="hf-clip", in_channels=3, image_size=int(vision_cfg.image_size),
                          width=int(vision_cfg.hidden_size), depth=int(vision_cfg.num_hidden_layers),
                          patch_size=int(vision_cfg.patch_size)),
        text=TextConfig(name="hf-clip", path=src.stem, max_length=int(text_cfg.max_position_embeddings),
                        hidden_size=int(text_cfg.hidden_size), num_layers=int(text_cfg.num_hidden_layers),
                        num_heads=int(text_cfg.num_attention_heads)),
    )
    model = new_model(cfg, text_hf=text_cfg.to_dict(), image_hf=vision_cfg.to_dict(), tokenizer=tok_dir)
    from medvl.models.importers.base import head_weights

    values: dict[str, Any] = {}
    values.update(_inner_state("image_encoder.model.", model.image_encoder.model, hf.vision_model, "vision_model"))
    values.update(_inner_state("text_encoder.model.", model.text_encoder.model, hf.text_model, "text_model"))
    values.update(head_weights("image", {"proj.weight": hf.visual_projection.weight.detach()}))
    values.update(head_weights("text", {"proj.weight": hf.text_projection.weight.detach()}))
    values["logit_scale"] = hf.logit_scale.detach().reshape(())
    assign(model, values, source=src)
    size = int(vision_cfg.image_size)
    if variant == "chexzero":
        image = {"in_channels": 3, "image_size": size, "fit": "pad", "resample": "bicubic",
                 "mean": [101.48761 / 255.0] * 3, "std": [83.43944 / 255.0] * 3}
        zeroshot = {"scoring": "softmax", "ensemble": "mean", "prompts": "chexzero"}
        notes = [("CheXzero resizes twice (to 320, padded, then to 224); medvl fits the "
                 "image to 224 in one resize"),
                 ("CheXzero's softmax uses cosine similarities without a temperature; medvl's "
                 "softmax rule scales them by the model's logit_scale (the ranking, hence "
                 "AUROC, is the same)")]
    else:
        image = {"in_channels": 3, "image_size": size, "fit": "crop", "resample": "bicubic",
                 "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
        zeroshot = {"scoring": "classes", "ensemble": "mean"}
        notes = []
    return Imported(
        model=model, image=image, text={"expand_abbreviations": False, "lowercase": False},
        zeroshot=zeroshot, name="CheXzero" if variant == "chexzero" else "OpenAI CLIP",
        conversion=("OpenAI CLIP state dict read with torch.load(weights_only=True); mapped onto "
                    "transformers CLIPModel (in_proj split into q/k/v, proj and text_projection "
                    "transposed into bias-free linear layers, QuickGELU, LayerNorm eps 1e-5) and "
                    "run as medvl's hf-clip towers."),
        notes=notes, source_files=[src],
    )


def _used_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """Keys :func:`convert_openai_state` reads (to refuse unknown extras)."""
    used = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
            "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
            "visual.proj", "token_embedding.weight", "positional_embedding", "ln_final.weight",
            "ln_final.bias", "text_projection", "logit_scale"}
    used |= {k for k in state if k.startswith(("visual.transformer.resblocks.", "transformer.resblocks."))}
    return used

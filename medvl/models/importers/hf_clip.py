"""Hugging Face ``CLIPModel`` and ``SiglipModel`` directories (MedSigLIP is a SigLIP).

Facts used (transformers' ``modeling_clip.py`` / ``modeling_siglip.py``, the SigLIP
and MedSigLIP model cards):

* CLIP: image embedding = ``visual_projection(post_layernorm([CLS]))``, text embedding
  = ``text_projection(final_layer_norm(state at the end-of-text token))``; both
  projections have no bias; ``logit_scale`` is stored as a log. Zero-shot: softmax of
  ``scale * cos`` over the classes.
* SigLIP: the image embedding is the attention-pooling head's output and the text
  embedding the last position's state through the text tower's ``head``; there is no
  separate projection. Logits are ``exp(logit_scale) * cos + logit_bias`` and each is
  read through a sigmoid. The text is padded to ``max_length`` (64 for MedSigLIP) as
  in training.
* Preprocessing comes from the directory's ``preprocessor_config.json`` (CLIP: shortest
  side to 224 bicubic, centre crop, OpenAI mean/std; SigLIP/MedSigLIP: resized to
  448x448 without keeping the aspect ratio, bicubic (``resample: 3``), mean = std = 0.5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medvl.errors import CheckpointError
from medvl.models.config import HeadKind, ImageConfig, ModelConfig, TextConfig
from medvl.models.importers.base import (
    Imported,
    assign,
    from_pretrained,
    head_weights,
    new_model,
    prefixed,
    read_image_processor,
    read_json,
    tokenizer_dir,
)

#: preprocessing when a directory has no ``preprocessor_config.json``
_DEFAULT_IMAGE = {
    "clip": {"fit": "crop", "resample": "bicubic", "mean": [0.48145466, 0.4578275, 0.40821073],
             "std": [0.26862954, 0.26130258, 0.27577711]},
    "siglip": {"fit": "stretch", "resample": "bicubic", "mean": [0.5, 0.5, 0.5],
               "std": [0.5, 0.5, 0.5]},
}


def import_hf_clip(src: Path, *, kind: str, workdir: Path | None = None,
                   tokenizer: Path | None = None) -> Imported:
    """Import a ``CLIPModel`` (``kind="clip"``) or ``SiglipModel`` (``"siglip"``) directory.

    Args:
        src: the model directory (``config.json`` + weights).
        kind: ``clip`` or ``siglip``.
        workdir: unused (the same signature as the other importers).
        tokenizer: tokenizer directory when ``src`` has none.

    Raises:
        CheckpointError: not such a model, weights that do not load, no tokenizer.
    """
    import transformers

    del workdir
    src = Path(src)
    config_json = read_json(src / "config.json", what="model config")
    if config_json.get("model_type") != kind:
        raise CheckpointError(f"config.json has model_type {config_json.get('model_type')!r}",
                              path=src / "config.json", field="model_type", expected=repr(kind))
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    hf = from_pretrained(cls, src, source=src, what=f"{kind.upper()} model")
    vision_cfg, text_cfg = hf.config.vision_config, hf.config.text_config
    tok_dir = tokenizer_dir(tokenizer, src, what=f"{kind.upper()} text tower")

    head: HeadKind
    if kind == "clip":
        embed_dim = int(hf.config.projection_dim)
        head = "linear"
    else:
        embed_dim = int(text_cfg.hidden_size)
        head = "identity"
        if int(vision_cfg.hidden_size) != embed_dim:
            raise CheckpointError("SigLIP towers of different widths cannot share a space",
                                  path=src, field="vision_config.hidden_size",
                                  expected=f"{embed_dim} (the text width)")
    cfg = ModelConfig(
        embed_dim=embed_dim, head=head, head_bias=False,
        logit_scale_init=math.exp(float(hf.logit_scale.detach())),
        logit_bias_init=float(hf.logit_bias.detach()) if kind == "siglip" else None,
        image=ImageConfig(name=f"hf-{kind}", in_channels=3, image_size=int(vision_cfg.image_size),
                          width=int(vision_cfg.hidden_size), depth=int(vision_cfg.num_hidden_layers),
                          patch_size=int(vision_cfg.patch_size)),
        text=TextConfig(name=f"hf-{kind}", path=config_json.get("_name_or_path") or src.name,
                        max_length=int(text_cfg.max_position_embeddings),
                        hidden_size=int(text_cfg.hidden_size),
                        num_layers=int(text_cfg.num_hidden_layers),
                        num_heads=int(text_cfg.num_attention_heads)),
    )
    model = new_model(cfg, text_hf=text_cfg.to_dict(), image_hf=vision_cfg.to_dict(), tokenizer=tok_dir)
    values: dict[str, Any] = {}
    values.update(_inner_state("image_encoder.model.", model.image_encoder.model, hf.vision_model,
                               "vision_model"))
    values.update(_inner_state("text_encoder.model.", model.text_encoder.model, hf.text_model,
                               "text_model"))
    if kind == "clip":
        values.update(head_weights("image", {"proj.weight": hf.visual_projection.weight.detach()}))
        values.update(head_weights("text", {"proj.weight": hf.text_projection.weight.detach()}))
    values["logit_scale"] = hf.logit_scale.detach().reshape(())
    if kind == "siglip":
        values["logit_bias"] = hf.logit_bias.detach().reshape(())
    assign(model, values, source=src)

    image = dict(_DEFAULT_IMAGE[kind], in_channels=3, image_size=int(vision_cfg.image_size))
    processor = read_image_processor(src)
    notes = []
    if processor is None:
        notes.append("no preprocessor_config.json: the family's published preprocessing is assumed")
    else:
        image.update(processor)
    if kind == "siglip":
        notes.append("the MedSigLIP card recommends TensorFlow's bilinear resize (no antialias) to "
                     "reproduce its evaluations; medvl follows the processor config instead")
    zeroshot = ({"scoring": "classes", "ensemble": "mean"} if kind == "clip"
                else {"scoring": "sigmoid", "ensemble": "mean"})
    mapping = ("CLIPVisionModel and CLIPTextModel as medvl's hf-clip towers, visual_projection "
               "and text_projection as bias-free linear heads" if kind == "clip" else
               "SiglipVisionModel (attention-pool head) and SiglipTextModel (last token + head) "
               "as medvl's hf-siglip towers with identity heads, logit_scale and logit_bias kept")
    return Imported(
        model=model, image=image, text={"expand_abbreviations": False, "lowercase": False},
        zeroshot=zeroshot, name=str(config_json.get("_name_or_path") or src.name),
        hub_name=config_json.get("_name_or_path") or None,
        conversion=f"Hugging Face {cls.__name__} directory loaded with transformers; {mapping}.",
        notes=notes, source_files=sorted(p for p in src.glob("*.safetensors")) or sorted(src.glob("*.bin")),
    )


def _inner_state(prefix: str, target: Any, source: Any, attr: str) -> dict[str, Any]:
    """``source``'s transformer weights under ``target``'s keys.

    Composite models hold either the tower model or its inner transformer under
    ``vision_model`` / ``text_model`` depending on the transformers version; both sides
    are reduced to the inner transformer.
    """
    inner_target = getattr(target, attr, target)
    inner_source = getattr(source, attr, source)
    sub = f"{attr}." if inner_target is not target else ""
    return prefixed(prefix + sub, inner_source.state_dict())

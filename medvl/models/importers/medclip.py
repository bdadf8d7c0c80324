"""MedCLIP checkpoints (the Swin image tower variant).

Facts (MedCLIP ``modeling_medclip.py``, ``dataset.py``, ``constants.py``):

* ``MedCLIPModel(vision_cls=MedCLIPVisionModelViT)`` holds ``vision_model.model`` (a
  transformers ``SwinModel``, swin-tiny-patch4-window7-224), ``vision_model.projection_head``
  (Linear 768 -> 512, no bias), ``text_model.model`` (Bio_ClinicalBERT, a ``BertModel``),
  ``text_model.projection_head`` (Linear 768 -> 512, no bias) and ``logit_scale`` (a log);
  the released weights are one ``pytorch_model.bin`` state dict.
* image embedding: the Swin ``pooler_output`` (mean of the final layer-normed tokens)
  projected; a one-channel input is repeated to three.
* text embedding: the mean over token positions of the mean of hidden states 1, 2 and
  the last, projected. The original averages over every position of the padded batch;
  medvl averages over the report's own tokens, which is the same for a report encoded
  alone (or the longest of its batch) and independent of what it is batched with.
* preprocessing: grey image padded to a square (zeros), resized to 224 bicubic, centre
  crop 224, normalised with mean 0.5862785803043838, std 0.27950088968644304; text
  tokenised by Bio_ClinicalBERT's tokenizer with ``model_max_length`` 77.
* zero-shot (``PromptClassifier``): per class, the maximum over its prompts of
  ``logit_scale * cos``, then a softmax over the classes.
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
    head_weights,
    hf_from_state,
    load_state,
    new_model,
    prefixed,
    take,
    tokenizer_dir,
)
from medvl.models.importers.bert import load_bert_weights

WEIGHTS_NAME = "pytorch_model.bin"
IMAGE_SIZE = 224  # MedCLIP's constants.IMG_SIZE (Swin weights do not record it)


def swin_config_from_state(state: dict[str, torch.Tensor], *, source: Path, image_size: int) -> Any:
    """A ``SwinConfig`` read off SwinModel weights (published layout).

    Depths count the blocks per stage; heads and window come from each stage's relative
    position bias table (``(2w - 1)^2`` rows, one column per head).
    """
    from transformers import SwinConfig

    try:
        proj = state["embeddings.patch_embeddings.projection.weight"]  # (C, channels, p, p)
    except KeyError:
        raise CheckpointError("not Swin weights: embeddings.patch_embeddings.projection.weight "
                              "is missing", path=source) from None
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    depths, heads = [], []
    window = 7
    for s in stages:
        blocks = {int(m.group(1)) for k in state
                  if (m := re.match(rf"encoder\.layers\.{s}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        table = next(v for k, v in state.items()
                     if k.startswith(f"encoder.layers.{s}.blocks.0.") and k.endswith("relative_position_bias_table"))
        heads.append(int(table.shape[1]))
        window = (round(table.shape[0] ** 0.5) + 1) // 2
    fc1 = next((state[k] for k in ("encoder.layers.0.blocks.0.intermediate.dense.weight",
                                   "encoder.layers.0.blocks.0.mlp.fc1.weight") if k in state), None)
    if fc1 is None or not depths:
        raise CheckpointError("not Swin weights: no encoder blocks", path=source)
    mlp = fc1.shape[0] / proj.shape[0]
    return SwinConfig(image_size=image_size, patch_size=int(proj.shape[-1]), num_channels=int(proj.shape[1]),
                      embed_dim=int(proj.shape[0]), depths=depths, num_heads=heads, window_size=window,
                      mlp_ratio=float(mlp))


def import_medclip(src: Path, *, workdir: Path | None = None, tokenizer: Path | None = None,
                   text_config: Path | None = None) -> Imported:
    """Import a MedCLIP (Swin) checkpoint.

    Args:
        src: the unzipped ``medclip-vit`` directory or its ``pytorch_model.bin``.
        workdir: unused (the same signature as the other importers).
        tokenizer: Bio_ClinicalBERT's tokenizer directory (MedCLIP's checkpoint has none).
        text_config: Bio_ClinicalBERT's ``config.json`` (optional; else read off the shapes).

    Raises:
        CheckpointError: the ResNet variant, no tokenizer, weights that do not fit.
    """
    del workdir
    src = Path(src)
    weights = src / WEIGHTS_NAME if src.is_dir() else src
    state = load_state(weights)
    vision = take(state, "vision_model.model.")
    if "conv1.weight" in vision:
        raise CheckpointError("this is MedCLIP-ResNet (a torchvision ResNet-50 image tower)", path=weights,
                              expected="the MedCLIP-ViT (Swin) checkpoint")
    swin_config = swin_config_from_state(vision, source=weights, image_size=IMAGE_SIZE)
    swin = hf_from_state("SwinModel", swin_config, vision, source=weights, what="image tower (Swin)",
                         add_pooling_layer=False)
    text_fields = None
    if text_config:
        from medvl.models.importers.base import read_json

        tc = Path(text_config)
        text_fields = read_json(tc / "config.json" if tc.is_dir() else tc, what="text model config")
    bert = load_bert_weights(take(state, "text_model.model."), source=weights, what="text tower",
                             config=text_fields)
    tok_dir = tokenizer_dir(tokenizer, weights.parent, what="MedCLIP text tower (Bio_ClinicalBERT)")
    image_proj = take(state, "vision_model.projection_head.")
    text_proj = take(state, "text_model.projection_head.")
    if "weight" not in image_proj or "weight" not in text_proj or "logit_scale" not in state:
        raise CheckpointError("projection heads or logit_scale missing", path=weights,
                              expected="a MedCLIPModel state dict")
    cfg = ModelConfig(
        embed_dim=int(image_proj["weight"].shape[0]), head="linear", head_bias=False,
        logit_scale_init=math.exp(float(state["logit_scale"])),
        image=ImageConfig(name="hf-swin", in_channels=3, image_size=IMAGE_SIZE,
                          width=int(swin_config.embed_dim)),
        text=TextConfig(name="hf", path="emilyalsentzer/Bio_ClinicalBERT", pooling="mean",
                        pool_layers=[1, 2, -1], max_length=77),
    )
    model = new_model(cfg, text_hf=bert.config.to_dict(), image_hf=swin.config.to_dict(), tokenizer=tok_dir)
    values: dict[str, Any] = {}
    values.update(prefixed("image_encoder.model.", swin.state_dict()))
    values.update(prefixed("text_encoder.model.", bert.state_dict()))
    values.update(head_weights("image", {"proj.weight": image_proj["weight"]}))
    values.update(head_weights("text", {"proj.weight": text_proj["weight"]}))
    values["logit_scale"] = state["logit_scale"].reshape(())
    known = ("vision_model.model.", "vision_model.projection_head.", "text_model.model.",
             "text_model.projection_head.", "logit_scale")
    extra = sorted(k for k in state if not k.startswith(known))
    if extra:
        raise CheckpointError(f"{len(extra)} weights have no place (e.g. {extra[0]})", path=weights,
                              expected="a MedCLIPModel state dict")
    assign(model, values, source=weights)
    image = {"in_channels": 3, "image_size": IMAGE_SIZE, "fit": "pad", "resample": "bicubic",
             "mean": [0.5862785803043838] * 3, "std": [0.27950088968644304] * 3}
    return Imported(
        model=model, image=image, text={"expand_abbreviations": False, "lowercase": False},
        zeroshot={"scoring": "classes", "ensemble": "max"}, name="MedCLIP",
        conversion=("MedCLIP state dict read with torch.load(weights_only=True): vision_model.model as a "
                    "transformers SwinModel, text_model.model as a BertModel (mean of hidden states 1, 2 "
                    "and last, mean over tokens), both projection heads as bias-free linear heads."),
        notes=[("MedCLIP averages text states over every position of the padded batch; medvl over the "
               "report's own tokens (identical for a report encoded alone)"),
               "MedCLIP clamps logit_scale to [0, 4.6052] when computing logits"],
        source_files=[weights],
    )

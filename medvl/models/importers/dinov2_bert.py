"""A Hugging Face ``Dinov2Model`` image tower (RAD-DINO) with a BERT-family text tower.

Facts (transformers ``modeling_dinov2.py``; the RAD-DINO and CXR-BERT model cards):

* DINOv2's image feature is the final layer-normed [CLS] state (its ``pooler_output``),
  the patch states follow it; position embeddings are interpolated to any input size
  (RAD-DINO: ViT-B/14, 518 px, 37 x 37 patches).
* RAD-DINO's ``preprocessor_config.json`` (BitImageProcessor): shortest side 518
  bicubic, centre crop 518, mean 0.5307 and std 0.2583 on all three channels.
* CXR-BERT (``model_type: cxr-bert``) loads through its BERT weights (see
  :mod:`medvl.models.importers.bert`); BioClinicalBERT and PubMedBERT are plain BERT.

The two towers were never trained together: the projection heads are new (seeded
random) and there is no zero-shot rule until the pair is fine-tuned with medvl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvl.errors import CheckpointError
from medvl.models.config import ImageConfig, ModelConfig, TextConfig
from medvl.models.importers.base import (
    Imported,
    assign,
    from_pretrained,
    new_model,
    prefixed,
    read_image_processor,
    read_json,
    tokenizer_dir,
)
from medvl.models.importers.bert import load_text_directory

_DINOV2_DEFAULT = {"in_channels": 3, "image_size": 224, "fit": "crop", "resample": "bicubic",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def import_dinov2_bert(src: Path, *, text: Path | None = None, workdir: Path | None = None,
                       tokenizer: Path | None = None, embed_dim: int = 512, max_length: int = 128,
                       seed: int = 0) -> Imported:
    """Import a DINOv2 directory paired with a BERT-family text directory.

    Args:
        src: the ``Dinov2Model`` directory (RAD-DINO).
        text: the text model directory (CXR-BERT, BioClinicalBERT, PubMedBERT, ...).
        workdir: unused (the same signature as the other importers).
        tokenizer: tokenizer directory when the text directory has none.
        embed_dim: size of the new joint space (the heads are new).
        max_length: report token limit (medvl's default; the pair has no trained one).
        seed: seed of the new heads.

    Raises:
        CheckpointError: no text tower given, either directory unreadable.
    """
    import transformers

    del workdir
    src = Path(src)
    if text is None:
        raise CheckpointError("a DINOv2 image tower needs a text tower", path=src, field="--text",
                              expected="a BERT-family model directory (CXR-BERT, BioClinicalBERT, ...)")
    text = Path(text)
    info = read_json(src / "config.json", what="model config")
    if info.get("model_type") != "dinov2":
        raise CheckpointError(f"config.json has model_type {info.get('model_type')!r}",
                              path=src / "config.json", field="model_type", expected="'dinov2'")
    dino = from_pretrained(transformers.Dinov2Model, src, source=src, what="DINOv2 model")
    bert = load_text_directory(text)
    tok_dir = tokenizer_dir(tokenizer, text, what="text tower")
    text_info = read_json(text / "config.json", what="text model config")
    vision_cfg = dino.config
    image = read_image_processor(src) or dict(_DINOV2_DEFAULT)
    limit = int(getattr(bert.config, "max_position_embeddings", max_length) or max_length)
    cfg = ModelConfig(
        embed_dim=embed_dim, head="linear",
        image=ImageConfig(name="hf-dinov2", in_channels=3, image_size=int(image["image_size"]),
                          width=int(vision_cfg.hidden_size), depth=int(vision_cfg.num_hidden_layers),
                          patch_size=int(vision_cfg.patch_size)),
        text=TextConfig(name="hf", path=str(text_info.get("_name_or_path") or text.name), pooling="cls",
                        max_length=min(max_length, limit)),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new heads are reproducible
        model = new_model(cfg, text_hf=bert.config.to_dict(), image_hf=vision_cfg.to_dict(), tokenizer=tok_dir)
    values: dict[str, Any] = dict(model.state_dict())
    values.update(prefixed("image_encoder.model.", dino.state_dict()))
    values.update(prefixed("text_encoder.model.", bert.state_dict()))
    assign(model, values, source=src)
    name = f"{info.get('_name_or_path') or src.name} + {text_info.get('_name_or_path') or text.name}"
    return Imported(
        model=model, image=image, text={"expand_abbreviations": False, "lowercase": False},
        zeroshot=None, name=name, hub_name=info.get("_name_or_path") or None,
        conversion=("Dinov2Model directory loaded with transformers as medvl's hf-dinov2 tower ([CLS] "
                    f"after the final norm); text tower {text_info.get('model_type', 'bert')} read as a "
                    "transformers encoder (CXR-BERT through its BERT weights, no remote code); "
                    f"new linear heads to a {embed_dim}-d space (seed {seed})."),
        notes=[("the towers were trained separately: the projection heads are random and zero-shot "
               "scores mean nothing until the model is fine-tuned (medvl train with model.init_from)")],
        source_files=sorted(src.glob("*.safetensors")) or sorted(src.glob("*.bin")),
    )

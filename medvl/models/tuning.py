"""What trains in a tower: all of it, nothing (``freeze``), or LoRA adapters on frozen weights.

Applied by :class:`~medvl.models.model.MedVLModel` after the towers are built and,
for a model started from a directory (``model.init_from``), after its weights are
loaded, so adapters always wrap the loaded weights. Saving and loading rebuild the
same wrapping from the config, so a tuned model directory reloads strictly.

Text towers keep their established wrapping (``peft.get_peft_model`` around the
transformers model, :mod:`medvl.models.lora`); image encoders get adapters injected in
place (``peft.inject_adapter_in_model``), which keeps the encoder's own class and
forward (hooks, pooling) unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from medvl.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from medvl.models.config import ImageConfig
    from medvl.models.image_base import ImageEncoder
    from medvl.models.text_base import TextEncoder


def apply_text_tuning(tower: TextEncoder) -> None:
    """Freeze the text tower and/or add LoRA adapters as ``tower.cfg`` says."""
    cfg = tower.cfg
    model = getattr(tower, "model", None)
    if model is None:
        return
    if cfg.freeze:
        model.requires_grad_(False)
    if cfg.lora_rank > 0:
        from medvl.models.lora import add_lora

        tower.model = add_lora(model, cfg, default_targets=list(getattr(tower, "lora_targets", [])))


def apply_image_tuning(encoder: ImageEncoder, cfg: ImageConfig) -> None:
    """Freeze the image encoder and/or inject LoRA adapters as ``cfg`` says.

    With slice pooling only the 2D encoder is tuned; the pooling is new and trains.

    Raises:
        ConfigError: no module matches the LoRA targets, or the encoder has no
            default targets and none are configured.
        ModelError: peft is missing.
    """
    backbone: nn.Module = getattr(encoder, "encoder2d", encoder)
    if cfg.lora_rank > 0:
        targets = list(cfg.lora_targets) or list(getattr(backbone, "lora_targets", []))
        inject_lora(backbone, targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                    field="model.image.lora_targets")
        for name, p in backbone.named_parameters():
            p.requires_grad = "lora_" in name
    elif cfg.freeze:
        backbone.requires_grad_(False)


def frozen_backbone(encoder: ImageEncoder, cfg: ImageConfig) -> nn.Module | None:
    """The module to keep in eval mode (no dropout, fixed norm statistics), if any."""
    if cfg.freeze and cfg.lora_rank == 0:
        return getattr(encoder, "encoder2d", encoder)
    return None


def inject_lora(module: nn.Module, targets: list[str], *, rank: int, alpha: int, field: str) -> None:
    """Inject LoRA layers of ``rank`` into the modules of ``module`` named ``targets``."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ModelError("LoRA needs the 'peft' package", field=field,
                         expected="pip install peft") from None
    layers = {name.rsplit(".", 1)[-1] for name, m in module.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))}
    if not targets or not set(targets) & layers:
        raise ConfigError(
            f"no layer named {targets} in the image encoder" if targets
            else "this encoder has no default LoRA targets", field=field,
            expected="layer names such as " + ", ".join(sorted(layers)[:10]),
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                        bias="none")
    inject_adapter_in_model(config, module)

"""LoRA adapters on a text tower, via peft.

Only the adapter matrices train; the wrapped model keeps its weights frozen. The
wrapped model's state dict (base weights plus ``lora_A``/``lora_B``) is what
``save_pretrained`` writes, and the same wrapping is rebuilt on load from the config.
"""

from __future__ import annotations

from typing import Any

from medvl.errors import ConfigError, ModelError
from medvl.models.config import TextConfig


def add_lora(model: Any, cfg: TextConfig, *, default_targets: list[str]) -> Any:
    """Wrap ``model`` with LoRA adapters of rank ``cfg.lora_rank``.

    Args:
        model: a transformers base model.
        cfg: the text section (``lora_rank``, ``lora_alpha``, ``lora_targets``).
        default_targets: module names to adapt when ``cfg.lora_targets`` is empty.

    Raises:
        ModelError: peft is missing.
        ConfigError: no module matches the targets.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("LoRA needs the 'peft' package", field="model.text.lora_rank",
                         expected="pip install peft") from None
    targets = list(cfg.lora_targets or default_targets)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not set(targets) & names:
        raise ConfigError(
            f"no module named {targets} in the text model", field="model.text.lora_targets",
            expected="names such as " + ", ".join(sorted(n for n in names if "proj" in n or n in ("query", "value"))[:8]),
        )
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets,
                      lora_dropout=0.0, bias="none")
    return get_peft_model(model, lora)

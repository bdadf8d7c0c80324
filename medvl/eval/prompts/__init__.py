"""Prompt sets moved to :mod:`medvl.inference.prompts` (round 2); these names stay importable."""

from medvl.inference.prompts import (
    BUILTIN,
    PromptSet,
    load_prompt_set,
    prompt_set_for_modality,
)

__all__ = ["BUILTIN", "PromptSet", "load_prompt_set", "prompt_set_for_modality"]

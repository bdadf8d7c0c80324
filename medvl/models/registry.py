"""Registries of the model room's closed choices.

Builders register themselves on import of their module; :func:`ensure_loaded`
imports those modules so a name is found regardless of import order, while heavy
libraries (MONAI costs ~6 s to import) load only when a tower is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medvl.registry import Registry

#: name -> ``builder(cfg: ImageConfig, *, load_pretrained: bool) -> ImageEncoder``
IMAGE_ENCODERS: Registry[Callable[..., Any]] = Registry("image encoder")
#: name -> ``builder(cfg: TextConfig, *, saved: dict | None) -> TextEncoder``
TEXT_ENCODERS: Registry[Callable[..., Any]] = Registry("text encoder")

_MODULES = (
    "medvl.models.image2d",
    "medvl.models.image_vit",
    "medvl.models.image_hf",
    "medvl.models.image3d",
    "medvl.models.text_bert",
    "medvl.models.text_llm",
)
_loaded = False


def ensure_loaded() -> None:
    """Import every builder module once so the registries are complete."""
    global _loaded
    if _loaded:
        return
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # a module of this room not written yet; a missing third-party package
            # must still surface
            if exc.name != name:
                raise
    _loaded = True

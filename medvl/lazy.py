"""Lazy package exports: ``import medvl.eval`` stays cheap, torch loads on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a module-level ``__getattr__`` that imports ``exports[name]`` on first access.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module that defines it.

    Example:
        >>> __getattr__ = lazy_exports(__name__, {"train": "medvl.train.engine"})
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this hook
        return value

    return __getattr__

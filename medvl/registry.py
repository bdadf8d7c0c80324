"""Name -> constructor registries for closed choices (encoders, losses, poolings, ...).

Example:
    >>> IMAGE_ENCODERS = Registry("image encoder")
    >>> @IMAGE_ENCODERS.register("resnet18")
    ... def build_resnet18(cfg): ...
    >>> IMAGE_ENCODERS.get("resnet18")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medvl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components; unknown names raise :class:`ConfigError` listing the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str, *, field: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'",
                field=field,
                expected="one of " + ", ".join(sorted(self._items)),
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

"""The finding vocabulary, read from ``medvl/resources/findings.yaml`` (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Finding:
    """One finding of the vocabulary.

    Attributes:
        name: label key used in manifests (``pleural_effusion``).
        display: human-readable name (``Pleural effusion``).
        modalities: modalities the finding is defined for.
        located: whether the finding has laterality / zone.
    """

    name: str
    display: str
    modalities: tuple[str, ...]
    located: bool


@lru_cache(maxsize=1)
def load_findings() -> tuple[Finding, ...]:
    """Return the vocabulary in file order."""
    text = resources.files("medvl.resources").joinpath("findings.yaml").read_text("utf-8")
    data = yaml.safe_load(text)["findings"]
    return tuple(
        Finding(name=k, display=v["display"], modalities=tuple(v["modalities"]), located=bool(v["located"]))
        for k, v in data.items()
    )


def finding_names(modality: str | None = None) -> list[str]:
    """Label keys, optionally restricted to those defined for ``modality`` (``CR``, ``CT``...)."""
    return [f.name for f in load_findings() if modality is None or modality in f.modalities]

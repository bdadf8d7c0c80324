"""medvl.data: manifests -> validated, preprocessed, cached, batched studies.

Public API (imported lazily so ``import medvl.data.manifest`` and the CLI stay fast):

* :func:`build_dataset` / :class:`StudyDataset` / :func:`load_model_input` (``medvl.data.dataset``)
* :func:`build_dataloader` / :class:`StudyLoader` / :class:`ResumableSampler`
  (``medvl.data.loader``)
* :class:`DataConfig` (``medvl.data.config``)
* :func:`is_empty_batch` (``medvl.data.collate``)
* :func:`validate_manifest` (``medvl.data.validate``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "medvl.data.config",
    "StudyDataset": "medvl.data.dataset",
    "build_dataset": "medvl.data.dataset",
    "label_vector": "medvl.data.dataset",
    "load_model_input": "medvl.data.dataset",
    "StudyLoader": "medvl.data.loader",
    "ResumableSampler": "medvl.data.loader",
    "build_dataloader": "medvl.data.loader",
    "StudyCollate": "medvl.data.collate",
    "is_empty_batch": "medvl.data.collate",
    "PreprocessCache": "medvl.data.cache",
    "ModelInputTransform": "medvl.data.transforms",
    "ModelInputTransformd": "medvl.data.transforms",
    "validate_manifest": "medvl.data.validate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medvl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

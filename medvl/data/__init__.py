"""medvl.data: manifests -> validated, preprocessed, cached, batched studies.

Public API (imported lazily so ``import medvl.data.manifest`` and the CLI stay fast):

* :func:`build_dataset` / :class:`StudyDataset` (``medvl.data.dataset``); one file as
  training preprocesses it: ``medvl.load(model_dir).prepare(path)`` (``medvl.inference``)
* :func:`build_dataloader` / :class:`StudyLoader` / :class:`ResumableSampler`
  (``medvl.data.loader``)
* :class:`DataConfig` (``medvl.data.config``)
* :func:`is_empty_batch` (``medvl.data.collate``)
* :func:`validate_manifest` (``medvl.data.validate``)
"""

from __future__ import annotations

from medvl.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "medvl.data.config",
    "StudyDataset": "medvl.data.dataset",
    "build_dataset": "medvl.data.dataset",
    "label_vector": "medvl.data.dataset",
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


__getattr__ = lazy_exports(__name__, _EXPORTS)

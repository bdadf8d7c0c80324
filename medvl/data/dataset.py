"""``StudyDataset``: manifest rows -> model inputs, report text and label vectors.

One item per study of one split. ``__getitem__`` reads the image with
``medvl.io.read_image`` (or a reader given for tests), preprocesses it with
:class:`~medvl.data.transforms.ModelInputTransform` through the optional
:class:`~medvl.data.cache.PreprocessCache`, augments it when asked, prepares the
report text and turns the labels into a ``(K,)`` vector over ``finding_names()``.

A study whose image cannot be read or preprocessed, or whose chosen report sections
are all empty, is **skipped, never fatal**: the
item comes back as ``{"skipped": {"study_id", "path", "error"}, "index": i}``, is
appended to ``dataset.skipped`` in the process that loaded it, and the collate
function drops it (and carries the record to the main process, see
:class:`~medvl.data.loader.StudyLoader`). A study skipped once is not read again by a
dataset that knows its record (the main process's, or a worker forked after the
record reached it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl.data.cache import PreprocessCache
from medvl.data.config import DataConfig
from medvl.data.manifest import ManifestRow, read_manifest, resolve_path
from medvl.data.text import prepare_text
from medvl.data.transforms import (
    ModelInputTransform,
    build_augmentation,
    preprocess_signature,
)
from medvl.errors import ManifestError
from medvl.findings import finding_names

log = logging.getLogger(__name__)

Reader = Callable[[Path], Any]


def label_vector(labels: dict[str, int], names: list[str]) -> np.ndarray:
    """Labels mapping -> float32 ``(K,)``: 1 / 0 / -1 as given, NaN where not mentioned.

    Keys outside ``names`` are ignored here (``medvl validate`` reports them).
    """
    out = np.full(len(names), np.nan, dtype=np.float32)
    for k, name in enumerate(names):
        if name in labels:
            out[k] = float(labels[name])
    return out


def _default_reader(cfg: DataConfig) -> Reader:
    from functools import partial

    from medvl.io import read_image  # the io room's public reader

    return partial(read_image, **cfg.io.as_kwargs())


class StudyDataset(Dataset):
    """The studies of one split, as model-ready items.

    Args:
        cfg: the data section.
        manifest_path: the manifest (JSONL); relative image paths resolve against its folder.
        split: ``train``, ``val`` or ``test``.
        reader: image reader, ``path -> MedicalImage``; defaults to ``medvl.io.read_image``.
        augment: apply random augmentation (``None``: ``cfg.augment`` on the train split).
        seed: base seed of augmentation and sentence sampling; draws depend only on
            ``(seed, epoch, index)``, so they are identical across worker counts and
            reproducible on resume.

    Attributes:
        rows: the manifest rows of the split whose ``dims`` match ``cfg.dims``.
        finding_names: label order of the ``labels`` vectors.
        skipped: ``[{"study_id", "path", "error"}]`` of studies that could not be loaded.
        excluded: count of split rows left out because their ``dims`` differ.
    """

    def __init__(
        self,
        cfg: DataConfig,
        manifest_path: str | Path,
        split: str,
        *,
        reader: Reader | None = None,
        augment: bool | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.manifest_path = Path(manifest_path)
        self.split = split
        rows = read_manifest(self.manifest_path, split=split)
        self.rows: list[ManifestRow] = [r for r in rows if r.dims == cfg.dims]
        self.excluded = len(rows) - len(self.rows)
        if self.excluded:
            log.info("%s: %d %s row(s) with dims != %d left out", manifest_path,
                        self.excluded, split, cfg.dims)
        self.finding_names = finding_names()
        self.reader = reader if reader is not None else _default_reader(cfg)
        self.transform = ModelInputTransform(cfg)
        self.cache = (
            PreprocessCache(cfg.cache_dir, preprocess_signature(cfg), cfg.cache_dtype, cfg.cache_key)
            if cfg.cache_dir else None
        )
        do_augment = cfg.augment and split == "train" if augment is None else augment
        self.augment = build_augmentation(cfg) if do_augment else None
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: list[dict[str, str]] = []
        self._skipped_by_id: dict[str, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one item's image: ``(C, H, W)`` or ``(C, D, H, W)``."""
        return (self.cfg.in_channels, *self.cfg.spatial_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation and sentence draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def image_path(self, index: int) -> Path:
        """Absolute path of the image of item ``index``."""
        return resolve_path(self.manifest_path, self.rows[index].image)

    def load_image(self, index: int, *, normalized: bool = True) -> np.ndarray:
        """Deterministic model input of item ``index``, float32 ``(C, *image_size)``.

        The cache (when enabled) holds the distinct channels; repetition to
        ``in_channels`` and the ``mean``/``std`` normalisation happen after it.

        Args:
            index: the item.
            normalized: apply ``mean``/``std``; ``False`` gives the [0, 1] input that
                augmentation works on (it normalises afterwards).

        Raises:
            MedvlError / OSError / ...: whatever reading or preprocessing raised.
        """
        path = self.image_path(index)
        if not path.exists():
            raise ManifestError("image file not found", path=path, field="image")

        def compute() -> np.ndarray:
            return self.transform.core(self.reader(path))

        x = self.transform.expand(compute() if self.cache is None else self.cache.get_or_compute(path, compute))
        return self.transform.normalize(x) if normalized else x

    def record_skip(self, record: dict[str, str]) -> None:
        """Add a skipped-study record once (by study id)."""
        if record["study_id"] not in self._skipped_by_id:
            self._skipped_by_id[record["study_id"]] = dict(record)
            self.skipped.append(dict(record))

    def _rng_seed(self, index: int) -> list[int]:
        return [self.seed, self.epoch, int(index)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        known = self._skipped_by_id.get(row.study_id)
        if known is not None:
            # Not retried: a broken 500 MB series would be decoded again every epoch.
            return {"skipped": dict(known), "index": index}
        try:
            image = self.load_image(index, normalized=self.augment is None)
            text = prepare_text(row.report, self.cfg, np.random.default_rng(self._rng_seed(index)),
                                sample=self.split == "train")
        except Exception as exc:  # noqa: BLE001 - a bad study must never stop training
            record = {"study_id": row.study_id, "path": str(self.image_path(index)),
                      "error": f"{type(exc).__name__}: {exc}"}
            log.warning("skipping study %s: %s", row.study_id, record["error"])
            self.record_skip(record)
            return {"skipped": record, "index": index}
        if self.augment is not None:
            seed = int(np.random.SeedSequence(self._rng_seed(index)).generate_state(1)[0])
            self.augment.set_random_state(seed)
            image = self.transform.normalize(self.augment(image))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "text": text,
            "labels": torch.from_numpy(label_vector(row.labels, self.finding_names)),
            "study_id": row.study_id,
            "patient_id": row.patient_id,
            "index": index,
        }


def build_dataset(
    data_cfg: DataConfig | dict[str, Any] | None,
    manifest_path: str | Path | None,
    split: str,
    **kwargs: Any,
) -> StudyDataset:
    """Build the dataset of one split.

    Args:
        data_cfg: a :class:`DataConfig` or the ``data`` section as a mapping.
        manifest_path: the manifest; ``None`` uses ``data_cfg.manifest``.
        split: ``train``, ``val`` or ``test``.
        **kwargs: passed to :class:`StudyDataset` (``reader``, ``augment``, ``seed``).

    Raises:
        ConfigError: invalid data section. ManifestError: unreadable manifest.
    """
    cfg = as_data_config(data_cfg)
    path = manifest_path if manifest_path is not None else cfg.manifest
    if path is None:
        raise ManifestError("no manifest given", field="data.manifest",
                            expected="a manifest path argument or data.manifest")
    return StudyDataset(cfg, path, split, **kwargs)


def as_data_config(data_cfg: DataConfig | dict[str, Any] | None) -> DataConfig:
    """Accept a :class:`DataConfig` or a raw ``data`` section."""
    if isinstance(data_cfg, DataConfig):
        data_cfg.validate()
        return data_cfg
    from medvl.config import from_dict

    return from_dict(DataConfig, data_cfg, where="data")

"""Frozen embeddings of a manifest split, computed once and shared by every task.

Evaluation and the case index both need the unit-normalised global image and report
embeddings of a split; this module runs the model over the data room's batches
(``medvl.data.build_dataloader``) and gathers them into numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.inference.embedding import embed_images, embed_texts, model_device

__all__ = ["Embeddings", "embed_batches", "embed_images", "embed_split", "embed_texts", "model_device",
           "split_batches"]


@dataclass
class Embeddings:
    """Global embeddings of one split, in dataset order.

    Attributes:
        image: ``(N, D)`` float32, unit norm.
        text: ``(N, D)`` float32, unit norm (empty ``(N, 0)`` when texts were not embedded).
        texts: the prepared report texts.
        labels: ``(N, K)`` float32 over ``finding_names()`` order (1, 0, -1, NaN).
        study_ids: study id per row.
        skipped: studies the dataset could not read (``{"study_id", "path", "error"}``).
    """

    image: np.ndarray
    text: np.ndarray
    texts: list[str]
    labels: np.ndarray
    study_ids: list[str]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.study_ids)


def _as_dict(cfg: Any) -> dict[str, Any]:
    from medvl.config import to_dict

    return dict(to_dict(cfg))


def split_batches(
    data_cfg: dict[str, Any] | None, manifest_path: str | Path, split: str | None
) -> tuple[Iterable[dict[str, Any]], Any]:
    """The data room's loader for one split (``None``: every split in turn), unshuffled,
    without augmentation and with whole reports (``text_mode: truncate``).

    Returns:
        ``(batches, datasets)``: an iterable of batches and the list of datasets behind
        it (for their ``skipped`` records).
    """
    from medvl.data import build_dataloader

    cfg = dict(data_cfg or {}) if not hasattr(data_cfg, "__dataclass_fields__") else _as_dict(data_cfg)
    # Embeddings describe the studies as they are: no augmentation and the whole (truncated)
    # report, even on the train split where training would augment and sample sentences.
    cfg.update(augment=False, text_mode="truncate", drop_last=False)
    splits = [split] if split is not None else ["train", "val", "test"]
    loaders = [build_dataloader(cfg, manifest_path, s, shuffle=False, augment=False) for s in splits]

    def _iter() -> Iterator[dict[str, Any]]:
        for loader in loaders:
            yield from loader

    return _iter(), [getattr(ld, "dataset", None) for ld in loaders]


def embed_batches(
    model: Any,
    batches: Iterable[dict[str, Any]],
    *,
    with_text: bool = True,
    progress: bool = False,
    desc: str = "embedding",
    total: int | None = None,
    max_studies: int | None = None,
) -> Embeddings:
    """Run the model over batches (``image``, ``text``, ``labels``, ``study_id``) and gather.

    Empty batches (every study unreadable) are skipped, as the contract allows.
    """
    images, texts_emb, texts, labels, ids = [], [], [], [], []
    bar = None
    if progress:
        from medvl.progress import progress

        bar = progress(desc=desc, total=total, unit="study")
    for batch in batches:
        sid = list(batch.get("study_id") or [])
        if not sid:
            continue
        images.append(embed_images(model, batch["image"]))
        if with_text:
            texts_emb.append(embed_texts(model, list(batch["text"])))
        texts.extend(batch["text"])
        lab = batch["labels"]
        labels.append(lab.detach().cpu().numpy().astype(np.float32) if hasattr(lab, "detach") else np.asarray(lab, np.float32))
        ids.extend(sid)
        if bar is not None:
            bar.update(len(sid))
        if max_studies is not None and len(ids) >= max_studies:
            break
    if bar is not None:
        bar.close()
    if not ids:
        return Embeddings(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [], np.zeros((0, 0), np.float32), [])
    image = np.concatenate(images)
    text = np.concatenate(texts_emb) if with_text else np.zeros((len(ids), 0), np.float32)
    return Embeddings(image, text, texts, np.concatenate(labels), ids)


def embed_split(
    model: Any,
    manifest_path: str | Path,
    split: str | None,
    data_cfg: dict[str, Any] | None = None,
    *,
    with_text: bool = True,
    progress: bool = False,
    max_studies: int | None = None,
) -> Embeddings:
    """Embeddings of one split of a manifest through the data room's loader.

    ``max_studies`` stops after the first that many studies (in manifest order).
    """
    batches, datasets = split_batches(data_cfg, manifest_path, split)
    sizes = [len(ds) for ds in datasets if hasattr(ds, "__len__")]
    total = sum(sizes) if sizes and len(sizes) == len(datasets) else None
    if total is not None and max_studies is not None:
        total = min(total, max_studies)
    emb = embed_batches(model, batches, with_text=with_text, progress=progress,
                        desc=f"embedding {split or 'all splits'}", total=total, max_studies=max_studies)
    for ds in datasets:
        emb.skipped.extend(list(getattr(ds, "skipped", []) or []))
    return emb

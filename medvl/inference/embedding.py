"""Unit-norm global embeddings of model-input batches, of texts, and of manifest splits.

The primitives every caller shares (eval, index, ``medvl embed``, end-of-training
calibration, the pipeline): the model runs in inference mode on its own device and the
global embeddings come back as float32 numpy arrays of unit L2 norm. A split is
embedded through the data room's loader (``medvl.data.build_dataloader``), so its
images are prepared exactly as in training.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.errors import ModelError

if TYPE_CHECKING:
    from medvl.data.config import DataConfig


def model_device(model: Any) -> Any:
    """The device of the model's first parameter (CPU for a parameter-less fake)."""
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def unit_rows(x: Any) -> np.ndarray:
    """A tensor ``(..., D)`` -> float32 numpy with unit L2 norm along the last axis."""
    import torch

    t = x.detach().float()
    t = torch.nn.functional.normalize(t, dim=-1)
    return t.cpu().numpy().astype(np.float32)


def embed_images(model: Any, image: Any) -> np.ndarray:
    """Unit-norm global embeddings ``(B, D)`` of an image batch tensor ``(B, C, *spatial)``."""
    import torch

    with torch.inference_mode():
        out = model.encode_image(image.to(model_device(model)))
    if out.embeds.ndim != 2:
        raise ModelError(
            f"encode_image returned embeds of shape {tuple(out.embeds.shape)}", field="embeds", expected="(B, D)"
        )
    return unit_rows(out.embeds)


def embed_images_and_features(model: Any, image: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-norm global embeddings ``(B, D)`` and unit-norm image features ``(B, F)``, one forward pass.

    The features are what the model's global image head receives (the backbone's pooled
    output, before the projection into the shared space): the out-of-distribution guard
    measures distances there, where a contrastive projection has not yet collapsed the
    directions training did not need. ``None`` for a model without an ``image_head``.
    """
    import torch

    head = getattr(model, "image_head", None)
    seen: list[Any] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0])) \
        if isinstance(head, torch.nn.Module) else None
    try:
        embeds = embed_images(model, image)
    finally:
        if hook is not None:
            hook.remove()
    feats = unit_rows(seen[-1].reshape(len(embeds), -1)) if seen else None
    return embeds, feats


def embed_texts(model: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm global embeddings ``(N, D)`` of texts (as given: no preparation), in batches."""
    import torch

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            out = model.embed_texts(list(texts[lo : lo + batch_size]))
            parts.append(unit_rows(out.embeds))
    return np.concatenate(parts, axis=0)


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
        features: ``(N, F)`` unit-norm image features (:func:`embed_images_and_features`)
            when asked for and the model has them, else None.
    """

    image: np.ndarray
    text: np.ndarray
    texts: list[str]
    labels: np.ndarray
    study_ids: list[str]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.study_ids)


def _as_dict(cfg: Any) -> dict[str, Any]:
    from medvl.config import to_dict

    return dict(to_dict(cfg))


def split_batches(
    data_cfg: DataConfig | dict[str, Any] | None, manifest_path: str | os.PathLike[str], split: str | None
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
    with_features: bool = False,
) -> Embeddings:
    """Run the model over batches (``image``, ``text``, ``labels``, ``study_id``) and gather.

    Empty batches (every study unreadable) are skipped, as the contract allows.
    ``with_features`` also gathers the image features (:func:`embed_images_and_features`).
    """
    images, texts_emb, texts, labels, ids = [], [], [], [], []
    feats: list[np.ndarray] = []
    bar = None
    if progress:
        from medvl.progress import progress as make_bar

        bar = make_bar(desc=desc, total=total, unit="study")
    for batch in batches:
        sid = list(batch.get("study_id") or [])
        if not sid:
            continue
        if with_features:
            emb, f = embed_images_and_features(model, batch["image"])
            images.append(emb)
            if f is not None:
                feats.append(f)
        else:
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
    features = np.concatenate(feats) if with_features and len(feats) == len(images) else None
    return Embeddings(image, text, texts, np.concatenate(labels), ids, features=features)


def embed_split(
    model: Any,
    manifest_path: str | os.PathLike[str],
    split: str | None,
    data_cfg: DataConfig | dict[str, Any] | None = None,
    *,
    with_text: bool = True,
    progress: bool = False,
    max_studies: int | None = None,
    with_features: bool = False,
) -> Embeddings:
    """Embeddings of one split of a manifest through the data room's loader.

    ``max_studies`` stops after the first that many studies (in manifest order);
    ``with_features`` also gathers the image features (:func:`embed_images_and_features`).
    """
    batches, datasets = split_batches(data_cfg, manifest_path, split)
    sizes = [len(ds) for ds in datasets if hasattr(ds, "__len__")]
    total = sum(sizes) if sizes and len(sizes) == len(datasets) else None
    if total is not None and max_studies is not None:
        total = min(total, max_studies)
    emb = embed_batches(model, batches, with_text=with_text, progress=progress,
                        desc=f"embedding {split or 'all splits'}", total=total, max_studies=max_studies,
                        with_features=with_features)
    for ds in datasets:
        emb.skipped.extend(list(getattr(ds, "skipped", []) or []))
    return emb


def model_fingerprint(model: Any) -> str:
    """A short hash of a model's config and weights: the model id of indexes and ``medvl embed``.

    Hashes the config and a strided sample of every tensor's bytes (cheap for big models,
    yet any retraining changes it).
    """
    import hashlib
    import json

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg if isinstance(cfg, dict) else repr(cfg), sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        t = state[name].detach().reshape(-1)
        step = max(1, t.numel() // 512)
        h.update(name.encode())
        h.update(str(tuple(state[name].shape)).encode())
        # Sample on the tensor's device, copy only the sample (a GPU model stays cheap).
        h.update(t[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

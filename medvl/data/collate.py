"""Collate: dataset items -> one batch dict, dropping skipped studies.

Batch keys (docs/contracts.md): ``image`` float32 ``(B, C, H, W)`` or
``(B, C, D, H, W)``, ``text`` ``list[str]``, ``labels`` float32 ``(B, K)`` (1 / 0 /
-1 / NaN), ``study_id`` and ``patient_id`` ``list[str]``, ``index`` long ``(B,)``,
plus ``skipped``: the records of the studies dropped from this batch (usually ``[]``).

**Empty batch.** When every study of a batch was skipped, the batch has the same keys
with ``B == 0`` (``image`` of shape ``(0, C, ...)``, ``labels`` ``(0, K)``, empty
lists); test it with :func:`is_empty_batch` (``batch["index"].numel() == 0``) and
skip the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def is_empty_batch(batch: dict[str, Any]) -> bool:
    """True when every study of the batch was skipped (nothing to train on)."""
    return batch["index"].numel() == 0


class StudyCollate:
    """Stack items into a batch; drop skipped items.

    Args:
        image_shape: ``(C, *spatial)`` of one image, used for an all-skipped batch.
        num_labels: K, the label vector length.
    """

    def __init__(self, image_shape: Sequence[int], num_labels: int) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_labels = int(num_labels)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kept = [it for it in items if "skipped" not in it]
        skipped = [it["skipped"] for it in items if "skipped" in it]
        if kept:
            image = torch.stack([it["image"] for it in kept])
            labels = torch.stack([it["labels"] for it in kept])
        else:
            image = torch.zeros((0, *self.image_shape), dtype=torch.float32)
            labels = torch.zeros((0, self.num_labels), dtype=torch.float32)
        return {
            "image": image,
            "text": [it["text"] for it in kept],
            "labels": labels,
            "study_id": [it["study_id"] for it in kept],
            "patient_id": [it["patient_id"] for it in kept],
            "index": torch.tensor([int(it["index"]) for it in kept], dtype=torch.long),
            "skipped": skipped,
        }

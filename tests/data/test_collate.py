"""Collate: stacking, dropping skipped items, the all-skipped batch."""

from __future__ import annotations

import math

import torch

from medvl.data.collate import StudyCollate, is_empty_batch


def _item(i: int, labels) -> dict:
    return {"image": torch.full((1, 4, 4), float(i)), "text": f"report {i}",
            "labels": torch.tensor(labels, dtype=torch.float32), "study_id": f"s{i}",
            "patient_id": f"p{i}", "index": i}


def test_stacks_in_order_and_keeps_nan() -> None:
    collate = StudyCollate((1, 4, 4), 2)
    batch = collate([_item(0, [1, math.nan]), _item(5, [-1, 0])])
    assert batch["image"].shape == (2, 1, 4, 4) and batch["image"][1].unique().tolist() == [5.0]
    assert batch["labels"].dtype == torch.float32
    assert torch.isnan(batch["labels"][0, 1]) and batch["labels"][1].tolist() == [-1.0, 0.0]
    assert batch["text"] == ["report 0", "report 5"]
    assert batch["study_id"] == ["s0", "s5"] and batch["patient_id"] == ["p0", "p5"]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 5]
    assert not is_empty_batch(batch)


def test_drops_skipped_and_carries_their_records() -> None:
    collate = StudyCollate((1, 4, 4), 2)
    rec = {"study_id": "s1", "path": "/x/s1.dcm", "error": "ImageReadError: bad"}
    batch = collate([_item(0, [1, 0]), {"skipped": rec, "index": 1}, _item(2, [0, 0])])
    assert batch["study_id"] == ["s0", "s2"] and batch["index"].tolist() == [0, 2]
    assert batch["image"].shape[0] == 2 and batch["labels"].shape[0] == 2
    assert batch["skipped"] == [rec]


def test_all_skipped_gives_empty_batch_with_model_shapes() -> None:
    collate = StudyCollate((3, 2, 4, 4), 9)
    rec = {"study_id": "s1", "path": "p", "error": "e"}
    batch = collate([{"skipped": rec, "index": 1}])
    assert is_empty_batch(batch)
    assert batch["image"].shape == (0, 3, 2, 4, 4) and batch["labels"].shape == (0, 9)
    assert batch["index"].dtype == torch.long and batch["text"] == []

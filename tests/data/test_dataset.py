"""Datasets and loaders: batches as docs/contracts.md states them."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from test_dataset_helpers import (
    make_corpus_2d,
    reader_under_test,
    row,
    write_dicom_2d,
    write_png,
)

from medvl.data import build_dataloader, build_dataset, is_empty_batch
from medvl.data.manifest import write_manifest
from medvl.errors import ConfigError, ManifestError
from medvl.findings import finding_names

NAN = math.nan


def _cfg(**kw):
    base = {"dims": 2, "image_size": 16, "batch_size": 4, "num_workers": 0}
    base.update(kw)
    return base


def test_batch_keys_shapes_and_dtypes(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=6)
    loader = build_dataloader(_cfg(), manifest, "train", shuffle=False, reader=reader_under_test())
    batches = list(loader)
    assert [len(b["study_id"]) for b in batches] == [4, 2]
    b = batches[0]
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 1, 16, 16)
    assert b["labels"].dtype == torch.float32 and b["labels"].shape == (4, len(finding_names()))
    assert b["index"].dtype == torch.long and b["index"].tolist() == [0, 1, 2, 3]
    assert b["study_id"] == ["s0", "s1", "s2", "s3"]
    assert b["patient_id"] == ["p-s0", "p-s1", "p-s2", "p-s3"]
    assert all(isinstance(t, str) and t for t in b["text"])
    assert b["skipped"] == []
    # windowed to [0, 1]
    assert float(b["image"].min()) >= 0.0 and float(b["image"].max()) <= 1.0


def test_labels_follow_vocabulary_order_with_nan_for_unmentioned(tmp_path) -> None:
    # The vocabulary order this test's expected rows are written in.
    assert finding_names() == [
        "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "nodule",
        "atelectasis", "edema", "support_device", "no_finding",
    ]
    pixels = np.full((8, 8), 100)
    write_png(tmp_path / "a.png", pixels)
    rows = [
        row("a", "a.png", labels={"cardiomegaly": 1, "pleural_effusion": -1}),
        row("b", "a.png", labels={"edema": 0, "no_finding": 0}),
        row("c", "a.png", labels={}),
        row("d", "a.png", labels={"nodule": 1, "some_extra_label": 1}),
    ]
    write_manifest(tmp_path / "m.jsonl", rows)
    batch = next(iter(build_dataloader(_cfg(), tmp_path / "m.jsonl", "train", shuffle=False,
                                       reader=reader_under_test())))
    expected = torch.tensor([
        [1, -1, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
        [NAN, NAN, NAN, NAN, NAN, NAN, 0, NAN, 0],
        [NAN] * 9,
        [NAN, NAN, NAN, NAN, 1, NAN, NAN, NAN, NAN],
    ])
    torch.testing.assert_close(batch["labels"], expected, equal_nan=True)


def test_text_uses_configured_sections_and_word_limit(tmp_path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    report = {"findings": "Heart size is normal. Lungs are clear.", "impression": "Normal chest.",
              "indication": "Cough."}
    write_manifest(tmp_path / "m.jsonl", [row("a", "a.png", report=report)])
    ds = build_dataset(_cfg(sections=["impression"]), tmp_path / "m.jsonl", "train",
                       reader=reader_under_test())
    assert "normal chest" in ds[0]["text"].lower()
    assert "lungs" not in ds[0]["text"].lower()
    ds = build_dataset(_cfg(max_words=3), tmp_path / "m.jsonl", "train", reader=reader_under_test())
    assert len(ds[0]["text"].split()) <= 3
    assert "cough" not in ds[0]["text"].lower()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_study_is_skipped_and_recorded(tmp_path, num_workers) -> None:
    manifest = make_corpus_2d(tmp_path, n=4)
    (tmp_path / "img" / "s1.dcm").write_bytes(b"this is not a DICOM file")
    (tmp_path / "img" / "s2.dcm").unlink()
    loader = build_dataloader(_cfg(num_workers=num_workers), manifest, "train", shuffle=False,
                              reader=reader_under_test())
    batches = list(loader)
    assert len(batches) == 1
    assert batches[0]["study_id"] == ["s0", "s3"]
    assert batches[0]["index"].tolist() == [0, 3]
    assert batches[0]["image"].shape[0] == 2 and batches[0]["labels"].shape[0] == 2
    skipped = {r["study_id"]: r for r in loader.dataset.skipped}
    assert set(skipped) == {"s1", "s2"}
    assert skipped["s1"]["path"].endswith("s1.dcm") and skipped["s1"]["error"]
    assert "not found" in skipped["s2"]["error"]
    # a second epoch does not duplicate the records
    list(loader)
    assert len(loader.dataset.skipped) == 2


def test_all_skipped_batch_is_empty_but_well_formed(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=2)
    for i in range(2):
        (tmp_path / "img" / f"s{i}.dcm").write_bytes(b"\0" * 10)
    batch = next(iter(build_dataloader(_cfg(in_channels=3), manifest, "train", shuffle=False,
                                       reader=reader_under_test())))
    assert is_empty_batch(batch)
    assert batch["image"].shape == (0, 3, 16, 16)
    assert batch["labels"].shape == (0, len(finding_names()))
    assert batch["text"] == [] and batch["study_id"] == []
    assert len(batch["skipped"]) == 2


def test_split_and_dims_filtering(tmp_path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    rows = [row("a", "a.png", split="train"), row("b", "a.png", split="test", patient="q"),
            row("c", "vol.nii.gz", split="train", dims=3, modality="CT")]
    write_manifest(tmp_path / "m.jsonl", rows)
    ds = build_dataset(_cfg(), tmp_path / "m.jsonl", "train", reader=reader_under_test())
    assert [r.study_id for r in ds.rows] == ["a"] and ds.excluded == 1
    assert len(build_dataset(_cfg(), tmp_path / "m.jsonl", "test", reader=reader_under_test())) == 1


def test_bad_config_names_the_key(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1)
    with pytest.raises(ConfigError, match="data.image_size"):
        build_dataset(_cfg(image_size=[8, 8, 8]), manifest, "train")
    with pytest.raises(ConfigError, match="data.window"):
        build_dataset(_cfg(window="lungs-ish"), manifest, "train")
    with pytest.raises(ConfigError, match="data.in_channels"):
        build_dataset(_cfg(window=["lung", "bone"], in_channels=1), manifest, "train")
    with pytest.raises(ConfigError, match="data.bogus"):
        build_dataset(_cfg(bogus=1), manifest, "train")
    with pytest.raises(ManifestError, match="data.manifest"):
        build_dataset(_cfg(), None, "train")


def test_monochrome1_radiograph_is_inverted(tmp_path) -> None:
    # Left half stored low (white in MONOCHROME1), right half high (black).
    pixels = np.zeros((8, 8), np.uint16)
    pixels[:, 4:] = 1000
    write_dicom_2d(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", window=(500, 1000))
    write_manifest(tmp_path / "m.jsonl", [row("a", "m1.dcm")])
    img = build_dataset(_cfg(image_size=8), tmp_path / "m.jsonl", "train",
                        reader=reader_under_test())[0]["image"][0]
    assert float(img[:, :4].mean()) > 0.9 and float(img[:, 4:].mean()) < 0.1


def test_io_options_reach_the_reader(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1, size=(40, 30))
    ds = build_dataset(_cfg(io={"max_voxels": 100}), manifest, "train")
    item = ds[0]
    assert "skipped" in item and ds.skipped[0]["study_id"] == "s0"
    assert build_dataset(_cfg(), manifest, "train")[0]["image"].shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="data.io.nonfinite"):
        build_dataset(_cfg(io={"nonfinite": "maybe"}), manifest, "train")


def test_study_without_text_in_chosen_sections_is_skipped(tmp_path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    write_manifest(tmp_path / "m.jsonl", [
        row("a", "a.png", report={"findings": "", "impression": "Normal."}),
        row("b", "a.png", report={"indication": "Cough.", "findings": " "}),
    ])
    ds = build_dataset(_cfg(sections=["findings", "impression"]), tmp_path / "m.jsonl", "train")
    assert ds[0]["text"] == "Normal."
    assert "skipped" in ds[1] and "report" in ds.skipped[0]["error"].lower()


def test_mean_std_normalise_the_item_after_augmentation(tmp_path) -> None:
    """Augmentation works on [0, 1] intensities; mean/std is the last step, per channel."""
    manifest = make_corpus_2d(tmp_path, n=1)
    plain = build_dataset(_cfg(window="bone", in_channels=2), manifest, "train")[0]["image"]
    norm = build_dataset(_cfg(window="bone", in_channels=2, mean=[0.5, 0.25], std=[0.5, 2.0]), manifest,
                         "train")[0]["image"]
    torch.testing.assert_close(norm[0], (plain[0] - 0.5) / 0.5)
    torch.testing.assert_close(norm[1], (plain[1] - 0.25) / 2.0)
    aug = build_dataset(_cfg(mean=[0.5], std=[0.25], augment=True), manifest, "train")
    aug_plain = build_dataset(_cfg(augment=True), manifest, "train")
    torch.testing.assert_close(aug[0]["image"], (aug_plain[0]["image"] - 0.5) / 0.25)
    assert float(aug[0]["image"].min()) < 0.0  # normalised values leave [0, 1]


def test_sentence_sampling_varies_by_epoch_on_train_only(tmp_path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    report = {"findings": " ".join(f"Sentence number {i} is here." for i in range(12))}
    write_manifest(tmp_path / "m.jsonl", [row("a", "a.png", report=report),
                                         row("b", "a.png", report=report, split="test", patient="q")])
    cfg = _cfg(text_mode="sample_sentences", max_words=15)
    train = build_dataset(cfg, tmp_path / "m.jsonl", "train")
    texts = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        texts.add(train[0]["text"])
        assert len(train[0]["text"].split()) <= 15
    assert len(texts) > 1
    test = build_dataset(cfg, tmp_path / "m.jsonl", "test")
    first = test[0]["text"]
    test.set_epoch(3)
    assert test[0]["text"] == first and first.startswith("Sentence number 0")


def test_a_skipped_study_is_not_read_again(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=2)
    (tmp_path / "img" / "s1.dcm").write_bytes(b"broken")
    calls: list[str] = []
    read = reader_under_test()

    def reader(path):
        calls.append(Path(path).name)
        return read(path)

    loader = build_dataloader(_cfg(), manifest, "train", shuffle=False, reader=reader)
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert [b["study_id"] for b in loader] == [["s0"]]
    assert calls.count("s1.dcm") == 1 and calls.count("s0.dcm") == 3
    assert len(loader.dataset.skipped) == 1

"""Integration with the synthetic corpus: every study of both modalities loads and validates."""

from __future__ import annotations

import pytest
import torch

from medvl.data import build_dataloader
from medvl.data.synth import generate_corpus
from medvl.data.validate import validate_manifest
from medvl.findings import finding_names


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_corpus(out, n_cxr=6, n_ct=3, seed=1, image_size=64, ct_size=(24, 24, 16),
                           ct_dicom_fraction=0.5)


@pytest.mark.parametrize("cfg", [
    {"dims": 2, "image_size": 32},
    {"dims": 3, "image_size": [8, 16, 16], "window": ["lung", "mediastinum"], "in_channels": 2},
])
def test_every_synthetic_study_loads(corpus, cfg, tmp_path) -> None:
    seen = 0
    for split in ("train", "val", "test"):
        loader = build_dataloader({**cfg, "batch_size": 4, "cache_dir": str(tmp_path)}, corpus, split,
                                  shuffle=False)
        for batch in loader:
            b = len(batch["study_id"])
            seen += b
            assert batch["image"].shape == (b, cfg.get("in_channels", 1), *loader.dataset.cfg.spatial_size)
            assert torch.isfinite(batch["image"]).all()
            assert batch["labels"].shape == (b, len(finding_names()))
            assert all(batch["text"])
        assert loader.dataset.skipped == []
    assert seen == (6 if cfg["dims"] == 2 else 3)


def test_synthetic_manifest_validates(corpus) -> None:
    report = validate_manifest(corpus, full=True)
    assert report.ok, [str(p) for p in report.errors]
    assert report.read_checked == 9

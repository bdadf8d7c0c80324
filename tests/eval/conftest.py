"""Fixtures of the eval tests: a manifest of fake studies and a fake data loader."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The fakes module sits next to this file; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medvl_fakes import fake_split_batches, make_rows

from medvl.data.manifest import write_manifest


@pytest.fixture
def fake_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest (80 train, 60 test fake studies) whose batches come from the fake loader."""
    rows = make_rows(80, seed=1, split="train", prefix="tr") + make_rows(60, seed=2, split="test", prefix="te")
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, rows)

    from medvl.inference import embedding as embed

    monkeypatch.setattr(embed, "split_batches", fake_split_batches)
    return manifest

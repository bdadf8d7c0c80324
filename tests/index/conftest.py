"""Fixtures of the index tests: the eval tests' transparent fakes and a fake loader."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Share the fake model and batches with the eval tests (one definition, two rooms of tests).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

from medvl_fakes import fake_split_batches


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the index's embedding pass through the fake loader (reads the manifest rows)."""
    from medvl.inference import embedding as embed

    monkeypatch.setattr(embed, "split_batches", fake_split_batches)

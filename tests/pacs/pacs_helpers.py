"""Helpers shared by the PACS tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.pacs.testing import orthanc_missing

MISSING = orthanc_missing()
needs_orthanc = pytest.mark.skipif(bool(MISSING), reason=MISSING or "")


def all_bytes(root: Path) -> bytes:
    """Every file under ``root`` concatenated (to search for identifiers)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())

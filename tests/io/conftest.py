"""Fixtures shared by the io tests: paths to real files that packages ship."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def testdata():
    """``testdata(name)`` -> path of a file bundled with pydicom or pydicom-data."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} not installed (pip install pydicom-data)")
        return Path(path)

    return get

"""Fixtures of the viewer tests: make ``apps`` importable and keep Streamlit caches apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The suite runs with --import-mode=importlib: put the repo root (for ``apps``) and this
# folder (for ``viewer_fakes``) on the path ourselves.
for _p in (REPO, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture
def clear_streamlit_caches():
    """Streamlit caches are process-wide; each app test starts from empty ones."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def viewer_target():
    """(script, app args, file to upload, text query) for the browser test."""
    from viewer_fakes import CT_FILE

    return HERE / "fake_viewer_app.py", ["--index", "unused", "--model", "unused"], CT_FILE, "left pleural effusion"

"""Fixtures of the viewer tests: make ``apps`` importable and keep Streamlit caches apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def clear_streamlit_caches():
    """Streamlit caches are process-wide; each app test starts from empty ones."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()

"""Fixtures of the viewer tests: test helpers importable, Streamlit caches kept apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The suite runs with --import-mode=importlib: put this folder (for ``viewer_fakes``) on
# the path ourselves. The viewer itself is the installed package ``medvl_viewer``.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def clear_streamlit_caches():
    """Streamlit caches are process-wide; each app test starts from empty ones."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="session")
def tiny_viewer_data(tmp_path_factory):
    """Ten synthetic radiographs, an untrained tiny model and its index (built once)."""
    from viewer_pipeline import build_viewer_data

    return build_viewer_data(tmp_path_factory.mktemp("viewer-data"))


@pytest.fixture
def viewer_target(tiny_viewer_data):
    """(index folder, model folder, an indexed image to upload, text query) for the browser test."""
    from medvl.index import CaseIndex

    index = CaseIndex.open(tiny_viewer_data.index_dir)
    upload = Path(index.get(index.study_ids()[-1]).image_path)
    index.close()
    return tiny_viewer_data.index_dir, tiny_viewer_data.model_dir, upload, "left pleural effusion"


@pytest.fixture(scope="session")
def tiny_viewer_data_3d(tmp_path_factory):
    """Three synthetic chest CTs, an untrained tiny native-3D model and its index."""
    from viewer_pipeline import build_viewer_data_3d

    return build_viewer_data_3d(tmp_path_factory.mktemp("viewer-data-3d"))

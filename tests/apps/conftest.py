"""Fixtures of the viewer tests: make ``apps`` importable and keep Streamlit caches apart."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ViewerData:
    """A tiny real setup: synthetic corpus, untrained tiny model, index built with it."""

    manifest: Path
    model_dir: Path
    index_dir: Path


#: Tiny model section (hidden 32, two layers), as the model room's tests use.
TINY_MODEL = {
    "embed_dim": 16,
    "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_length": 32},
}


@pytest.fixture(scope="session")
def tiny_viewer_data(tmp_path_factory) -> ViewerData:
    """Ten synthetic radiographs, an untrained tiny model and its index (built once)."""
    import torch

    from medvl.data.synth import generate_corpus
    from medvl.index import build_index
    from medvl.models import build_model

    root = tmp_path_factory.mktemp("viewer-data")
    manifest = generate_corpus(root / "corpus", n_cxr=10, n_ct=0, seed=0, image_size=64)
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY_MODEL)).eval()
    model.save_pretrained(root / "model")
    build_index(model, manifest, root / "index", data_cfg={"dims": 2, "image_size": 64, "batch_size": 5},
                config={"progress": False})
    return ViewerData(manifest, root / "model", root / "index")


@pytest.fixture
def viewer_target(tiny_viewer_data):
    """(script, app args, file to upload, text query) for the browser test."""
    from medvl.index import CaseIndex

    index = CaseIndex.open(tiny_viewer_data.index_dir)
    upload = Path(index.get(index.study_ids()[-1]).image_path)
    index.close()
    args = ["--index", str(tiny_viewer_data.index_dir), "--model", str(tiny_viewer_data.model_dir)]
    return REPO / "apps" / "viewer.py", args, upload, "left pleural effusion"

"""The viewer's PACS mode against a real Orthanc server (AppTest; the model/index side is the
viewer tests' fake backend, the server, its data and the de-identifying fetch are real)."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import needs_orthanc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))

from viewer_fakes import FakeLibrary

pytestmark = needs_orthanc
VIEWER = Path(__file__).resolve().parents[2] / "apps" / "medvl_viewer" / "app.py"


@pytest.fixture
def app_env(corpus_server, monkeypatch, tmp_path):
    import streamlit as st

    from medvl_viewer import backend as backend_mod

    server, studies = corpus_server
    fake = FakeLibrary()
    monkeypatch.setattr(backend_mod, "open_catalogue", lambda index_dir: fake)
    monkeypatch.setattr(backend_mod, "open_backend", lambda index_dir, model_dir: fake)
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path / "index"))
    monkeypatch.setenv("MEDVL_PACS_URL", server.url)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield server, studies, fake
    st.cache_resource.clear()


def _page_text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "subheader", "title", "info", "error", "warning", "text", "header"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    for df in at.dataframe:
        parts.append(df.value.to_csv())
    for sb in at.sidebar.selectbox:
        parts.extend(str(o) for o in sb.options)
    return "\n".join(parts)


def test_pacs_mode_lists_filters_opens_and_searches_without_identifiers(app_env) -> None:
    from streamlit.testing.v1 import AppTest

    _server, studies, fake = app_env
    at = AppTest.from_file(str(VIEWER), default_timeout=60)
    at.run()
    at.sidebar.radio(key="mode").set_value("PACS study").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == len(studies)
    assert set(table.columns) == {"ref", "date", "modalities", "description", "series", "instances"}
    # filter by modality: only the CT study remains
    at.sidebar.multiselect(key="pacs_modality").set_value(["CT"]).run()
    assert not at.exception, at.exception
    assert list(at.dataframe[0].value["modalities"]) == ["CT,SR"] or \
        list(at.dataframe[0].value["modalities"]) == ["SR,CT"]
    # open it: the page reads the de-identified copy and searches the index with it
    opened = [c for c in fake.calls if c[0] == "read_image"]
    assert opened, "the study was not opened"
    path = opened[-1][1]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    ct = next(s for s in studies if s.modality == "CT")
    assert len(files) == ct.n_instances
    assert all(pydicom.dcmread(f, stop_before_pixels=True).PatientIdentityRemoved == "YES" for f in files)
    assert [c for c in fake.calls if c[0] == "search_image" and c[1] == path]
    text = _page_text(at)
    assert "Study s-" in text and "de-identified copy" in text
    for s in studies:
        for needle in [*s.identifiers, s.study_uid]:
            assert needle not in text, needle
    assert "CHEST for ___ ___" in text  # description shown with the study's own identifiers scrubbed


def test_pacs_mode_without_server_says_how_to_configure(app_env, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("MEDVL_PACS_URL")
    at = AppTest.from_file(str(VIEWER), default_timeout=60)
    at.run()
    at.sidebar.radio(key="mode").set_value("PACS study").run()
    assert not at.exception
    assert any("MEDVL_PACS_URL" in str(i.value) for i in at.info)


def test_pacs_mode_bad_password_is_one_message_without_it(app_env, monkeypatch, tmp_path) -> None:
    from streamlit.testing.v1 import AppTest

    from medvl.pacs.testing import OrthancServer

    with OrthancServer(users={"viewer": "right-pw"}) as locked:
        monkeypatch.setenv("MEDVL_PACS_URL", locked.url)
        monkeypatch.setenv("MEDVL_PACS_USERNAME", "viewer")
        monkeypatch.setenv("MEDVL_PACS_PASSWORD", "wrong-pw-123")
        at = AppTest.from_file(str(VIEWER), default_timeout=60)
        at.run()
        at.sidebar.radio(key="mode").set_value("PACS study").run()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and "HTTP 401" in errors[0]
    assert "wrong-pw-123" not in _page_text(at)


def test_pacs_mode_filters_by_description_never_by_name(app_env) -> None:
    """(The date range goes to the server's search as since/until, tested with the source;
    AppTest cannot set a date range widget that starts empty.)"""
    from streamlit.testing.v1 import AppTest

    _server, studies, _fake = app_env
    at = AppTest.from_file(str(VIEWER), default_timeout=60)
    at.run()
    at.sidebar.radio(key="mode").set_value("PACS study").run()
    at.sidebar.text_input(key="pacs_description").set_value("chest").run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == len(studies)
    # the description is matched after the study's own identifiers are scrubbed: a
    # patient's name finds nothing, so the filter cannot be used to look a patient up
    at.sidebar.text_input(key="pacs_description").set_value("DOE000").run()
    assert not at.exception and not at.dataframe
    assert any("No study on the server matches" in str(i.value) for i in at.info)

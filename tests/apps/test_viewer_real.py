"""The viewer against the real library: synthetic corpus, tiny untrained model, tiny index.

An untrained model ranks arbitrarily, so these tests check what holds for any model:
the page shows exactly the ranking the index computes (checked against numpy on the
stored vectors), an indexed image queried by upload finds itself with similarity 1,
scores and probabilities are in range, and no identifier reaches the page.
"""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from streamlit.testing.v1 import AppTest

from medvl.index import CaseIndex

VIEWER = Path(__file__).resolve().parents[2] / "apps" / "medvl_viewer" / "app.py"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
TIMEOUT = 120  # the first run loads torch, MONAI and the model


@pytest.fixture
def app(tiny_viewer_data, monkeypatch, clear_streamlit_caches) -> AppTest:
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tiny_viewer_data.index_dir))
    monkeypatch.setenv("MEDVL_VIEWER_MODEL", str(tiny_viewer_data.model_dir))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.fixture(scope="module")
def index(tiny_viewer_data):
    idx = CaseIndex.open(tiny_viewer_data.index_dir)
    yield idx
    idx.close()


def _ranked(at: AppTest) -> list[tuple[str, float]]:
    """(study id, cosine similarity) of each hit, parsed from the page."""
    out = []
    for m in at.markdown:
        if m.value.startswith("**#"):
            study = m.value.split("**")[1].split(" · ")[1].replace("\\", "")  # ids are Markdown-escaped
            out.append((study, float(m.value.rsplit("(cosine ", 1)[1].rstrip(")"))))
    return out


def _views(at: AppTest) -> list[dict]:
    import json

    return [json.loads(e.proto.json) for e in at.get("bidi_component")
            if e.proto.component_name == "medvl_viewer.slice_view"]


def _upload(at: AppTest, name: str, data: bytes) -> None:
    at.sidebar.radio(key="mode").set_value("Uploaded image").run()
    gen = at.session_state.get("upload_gen", 0)
    at.sidebar.file_uploader(key=f"upload-{gen}").set_value((name, data, "application/octet-stream")).run()


def _page_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "subheader", "info", "error", "warning", "text"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def test_case_query_shows_the_index_ranking(app, index):
    study = index.study_ids()[3]
    app.sidebar.selectbox(key="case_id").set_value(study).run()
    assert not app.exception and not app.error
    # independent reference: cosine similarity of the stored unit-norm image vectors
    vectors = np.asarray(index.vectors["image"])
    ids = index.study_ids()
    sims = vectors @ vectors[ids.index(study)]
    expected = [(ids[i], float(sims[i])) for i in np.argsort(-sims, kind="stable") if ids[i] != study][:5]
    shown = _ranked(app)
    # an untrained model gives near-equal scores, which may swap places: compare scores
    np.testing.assert_allclose([v for _, v in shown], [v for _, v in expected], atol=1e-3)
    assert study not in [s for s, _ in shown]
    assert len(_views(app)) == 1 and len(app.image) == 5


def test_finding_scores_are_percentiles_among_the_indexed_cases(app):
    from medvl.eval.prompts import prompt_set_for_modality
    from medvl_viewer.panels import finding_display

    table = app.table[0].value.reset_index()
    assert list(table.columns) == ["Finding", "Percentile among indexed cases"]
    expected = {finding_display(f) for f in prompt_set_for_modality("DX").findings}
    assert set(table["Finding"]) == expected
    values = [int(v.rstrip("stndrh")) for v in table["Percentile among indexed cases"]]
    # an untrained model directory has no calibration: percentiles only, highest first
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True)


def test_uploaded_indexed_image_finds_itself_first(app, index, tiny_viewer_data):
    study = index.study_ids()[5]
    data = Path(index.get(study).image_path).read_bytes()
    _upload(app, "query.dcm", data)
    assert not app.exception and not app.error, [e.value for e in app.error]
    shown = _ranked(app)
    assert len(shown) == 5
    assert shown[0][1] == pytest.approx(1.0, abs=1e-3)
    # several untrained embeddings can tie at ~1.0; the query's own study must be among them
    assert study in [s for s, v in shown if v >= shown[0][1] - 1e-3]
    ds = pydicom.dcmread(io.BytesIO(data))
    page = _page_text(app)
    assert f"Modality: {ds.Modality}" in page
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.StudyDate)):
        assert secret not in page


def test_text_query_ranks_highlights_and_draws_the_heatmap(app, index, tiny_viewer_data):
    app.sidebar.radio(key="mode").set_value("Free text").run()
    app.sidebar.text_input(key="query_text").set_value("left pleural effusion").run()
    # with the report check, cases whose report states a left effusion come first
    from medvl.data.assertions import Agreement, find_assertions, report_agreement

    query = find_assertions("left pleural effusion")
    order = {Agreement.AGREES: 0, Agreement.SILENT: 1, Agreement.CONTRADICTS: 2}
    ranks = [order[report_agreement(query, index.get(s).report_text)] for s, _ in _ranked(app)]
    assert ranks == sorted(ranks)
    app.sidebar.checkbox(key="use_reports").uncheck().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    # independent reference: the saved model's text embedding against the stored image vectors
    from medvl.eval.embed import embed_texts
    from medvl.models import MedVLModel

    model = MedVLModel.from_pretrained(tiny_viewer_data.model_dir).eval()
    sims = np.asarray(index.vectors["image"]) @ embed_texts(model, ["left pleural effusion"])[0]
    shown = _ranked(app)
    np.testing.assert_allclose([v for _, v in shown], np.sort(sims)[::-1][:5], atol=1e-3)
    view = _views(app)[0]
    assert view["heat"].startswith("data:image/png;base64,") and view["opacity"] == 0.35
    app.slider(key=f"opacity-text-{shown[0][0]}").set_value(0.0).run()
    assert _views(app)[0]["opacity"] == 0.0


def test_volume_uploaded_to_a_radiograph_index_gets_a_clear_message(app):
    _upload(app, "brain.nii", (NIB_DATA / "anatomical.nii").read_bytes())
    assert not app.exception and not app.error
    assert [i.value for i in app.info if "cannot be searched" in i.value] == [
        "This upload is a 3D volume and the index holds 2D images, so it cannot be searched or scored here. "
        "It is shown for viewing only."]
    assert not _ranked(app) and not app.table


def test_heatmap_is_cropped_to_the_image_not_the_padding(tiny_viewer_data, index, tmp_path):
    from medvl_viewer.backend import open_backend

    # a non-square radiograph: the model input pads it to a square; the heatmap shown
    # over the image must cover the image only
    ds = pydicom.dcmread(index.get(index.study_ids()[0]).image_path)
    arr = ds.pixel_array[:, 12:52].copy()  # 64 rows x 40 columns
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # the source may be compressed
    path = tmp_path / "narrow.dcm"
    ds.save_as(path)
    backend = open_backend(tiny_viewer_data.index_dir, tiny_viewer_data.model_dir)
    heat = backend.heatmap(path, "left pleural effusion").array
    assert heat.shape == (64, 40)
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_a_model_that_did_not_build_the_index_is_refused_at_start(
    tiny_viewer_data, tmp_path, monkeypatch, clear_streamlit_caches
):
    import copy

    import torch
    from viewer_pipeline import TINY_MODEL, save_model

    from medvl.models import build_model

    torch.manual_seed(1)  # same architecture, other weights
    save_model(build_model(copy.deepcopy(TINY_MODEL)), tmp_path / "other", {"dims": 2, "image_size": 64})
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tiny_viewer_data.index_dir))
    monkeypatch.setenv("MEDVL_VIEWER_MODEL", str(tmp_path / "other"))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "Research use only" in at.warning[0].value
    message = at.error[0].value
    assert message.startswith("Cannot open the model: the model differs from the one this index was built with")
    assert str(tmp_path) not in message


def test_without_a_model_argument_the_index_s_model_is_used(tiny_viewer_data, monkeypatch, clear_streamlit_caches):
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tiny_viewer_data.index_dir))
    monkeypatch.delenv("MEDVL_VIEWER_MODEL", raising=False)
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_ranked(at)) == 5


def test_an_index_without_a_recorded_model_needs_the_model_argument(tiny_viewer_data, tmp_path):
    from medvl.errors import ModelError
    from medvl.index import build_index
    from medvl.models import MedVLModel
    from medvl_viewer.backend import open_backend

    model = MedVLModel.from_pretrained(tiny_viewer_data.model_dir).eval()
    build_index(model, tiny_viewer_data.manifest, tmp_path / "index", data_cfg={"dims": 2, "image_size": 64},
                config={"progress": False})  # a bare model: the index records no model folder
    with pytest.raises(ModelError, match=r"\[--model\]: no model given.*expected --model DIR"):
        open_backend(tmp_path / "index", None)
    assert open_backend(tmp_path / "index", tiny_viewer_data.model_dir).model_info().name


def test_text_query_against_reports_uses_the_report_vectors(app, index, tiny_viewer_data):
    from medvl.eval.embed import embed_texts
    from medvl.models import MedVLModel

    app.sidebar.radio(key="mode").set_value("Free text").run()
    app.sidebar.text_input(key="query_text").set_value("cardiomegaly").run()
    app.sidebar.radio(key="text_target").set_value("reports").run()
    assert not app.exception and not app.error
    model = MedVLModel.from_pretrained(tiny_viewer_data.model_dir).eval()
    sims = np.asarray(index.vectors["report"]) @ embed_texts(model, ["cardiomegaly"])[0]
    np.testing.assert_allclose([v for _, v in _ranked(app)], np.sort(sims)[::-1][:5], atol=1e-3)


def test_concurrent_sessions_get_the_same_results_as_one(tiny_viewer_data, index):
    from concurrent.futures import ThreadPoolExecutor

    from medvl_viewer.backend import open_backend

    # Streamlit serves each browser session in its own thread, all sharing one backend
    backend = open_backend(tiny_viewer_data.index_dir, tiny_viewer_data.model_dir)
    paths = [index.get(s).image_path for s in index.study_ids()]
    expected = {p: [h.study_id for h in open_backend(tiny_viewer_data.index_dir).search_image(p, 3).hits]
                for p in paths}

    def session(p):
        return p, [h.study_id for h in backend.search_image(p, 3).hits]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(session, paths * 2))
    for p, got in results:
        assert got == expected[p]


def test_a_real_chest_radiograph_upload_is_shown_and_searched(app):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)  # pydicom-data: real PA chest CR
    if path is None:
        pytest.skip("pydicom-data is not installed")
    data = Path(path).read_bytes()
    _upload(app, "chest.dcm", data)
    assert not app.exception and not app.error, [e.value for e in app.error]
    page = _page_text(app)
    assert "Modality: CR" in page and "Size: 1955 x 1841" in page
    assert len(_ranked(app)) == 5
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert [n.value for n in app.number_input] == [float(ds.WindowCenter), float(ds.WindowWidth)]
    for secret in (str(ds.PatientName), str(ds.PatientID)):
        if secret:
            assert secret not in page

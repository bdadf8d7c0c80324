"""The viewer's interactions, driven by Streamlit's AppTest against a fake library.

The fake says exactly what the library returned; these tests check what the page
shows: one number format, no raw scores, warnings above results, plain messages with
no paths or tag numbers, no file names, the reading order of reports, paging, "open as
query", heatmap defaults and the colour bar.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from viewer_fakes import CT_FILE, FakeLibrary

from medvl_viewer import backend as backend_mod
from medvl_viewer.backend import FindingScores, Heatmap, ModelInfo

VIEWER = Path(__file__).resolve().parents[2] / "apps" / "medvl_viewer" / "app.py"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
TIMEOUT = 30
#: Things no page may show: tag numbers, temp folders, exception class names.
FORBIDDEN = ("(7FE0", "(0028", "group 0028", "/tmp/", "medvl-upload-", "Traceback", "Error:")


@pytest.fixture
def fake(monkeypatch, tmp_path, clear_streamlit_caches):
    """A FakeLibrary behind ``open_catalogue`` and ``open_backend``; counts model loads."""
    return _install(FakeLibrary(), monkeypatch, tmp_path)


def _install(lib: FakeLibrary, monkeypatch, tmp_path) -> FakeLibrary:
    def open_backend(index_dir, model_dir):
        lib.loads.append((str(index_dir), str(model_dir)))
        return lib

    monkeypatch.setattr(backend_mod, "open_catalogue", lambda index_dir: lib)
    monkeypatch.setattr(backend_mod, "open_backend", open_backend)
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path / "index"))
    monkeypatch.setenv("MEDVL_VIEWER_MODEL", str(tmp_path / "model"))
    return lib


def _app() -> AppTest:
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    """Every piece of text on the page, for 'never shown' checks."""
    parts = []
    for kind in ("markdown", "caption", "subheader", "title", "info", "error", "warning", "text", "header"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def _whole_page(at: AppTest) -> str:
    """Every element's serialised proto (labels, options, component data included)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        children = getattr(node, "children", None) or {}
        for child in children.values() if isinstance(children, dict) else children:
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def _mode(at: AppTest, mode: str) -> AppTest:
    at.sidebar.radio(key="mode").set_value(mode).run()
    assert not at.exception, at.exception
    return at


def _views(at: AppTest) -> list[dict]:
    """Data of each image the slice-view component shows."""
    return [json.loads(e.proto.json) for e in at.get("bidi_component")
            if e.proto.component_name == "medvl_viewer.slice_view"]


def _pixels(view: dict) -> np.ndarray:
    raw = base64.b64decode(view["src"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)))


def _ranked(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    _mode(at, "Uploaded image")
    gen = at.session_state.get("upload_gen", 0)
    at.sidebar.file_uploader(key=f"upload-{gen}").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


# -- start ---------------------------------------------------------------------------
def test_banner_and_missing_arguments(monkeypatch, clear_streamlit_caches):
    monkeypatch.delenv("MEDVL_VIEWER_INDEX", raising=False)
    monkeypatch.delenv("MEDVL_VIEWER_MODEL", raising=False)
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert "Research use only" in at.warning[0].value
    assert "No index given" in at.error[0].value and "medvl viewer --index IDX" in at.error[0].value


def test_missing_index_folder_is_a_message_without_the_server_path(monkeypatch, tmp_path, clear_streamlit_caches):
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path / "nope"))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert at.error[0].value.startswith("Cannot open the index: index folder does not exist")
    assert str(tmp_path) not in _texts(at)


def test_bad_upload_limit_setting_is_a_message(fake, monkeypatch):
    monkeypatch.setenv("MEDVL_VIEWER_MAX_UPLOAD_MB", "lots")
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error[0].value.startswith("Cannot start the viewer: [--k / --max-upload-mb]: invalid viewer argument")
    assert not fake.loads


def test_landing_line_says_what_the_tool_does_and_the_three_ways_to_query(fake):
    at = _app()
    landing = at.markdown[0].value
    assert "finds cases similar to a query" in landing and "8 studies" in landing
    for way in ("a case from the index", "an uploaded image", "free text"):
        assert way in landing


# -- case from the index -------------------------------------------------------------
def test_case_query_shows_its_labels_view_report_in_reading_order_and_other_cases(fake):
    at = _app()
    at.sidebar.selectbox(key="case_id").set_value("S001").run()
    assert "Case S001" in [h.value for h in at.subheader]
    assert "CT · PA view · Labels: Cardiomegaly · uncertain: Atelectasis" in [c.value for c in at.caption]
    fake.cases[1].report = "FINDINGS: Cardiomegaly.\nIMPRESSION: Big heart.\nCOMPARISON: None.\nINDICATION: Cough."
    at.run()
    report = next(m.value for m in at.markdown if "INDICATION" in m.value)
    order = [report.index(s) for s in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")]
    assert order == sorted(order)
    assert ("search_image", CT_FILE, "CT", "S001", None) in fake.calls
    # the case itself is not its own neighbour; match percentiles in one format
    assert _ranked(at) == [
        "**#1 · S000** · match 100th percentile (cosine 1.000)",
        "**#2 · S002** · match 80th percentile (cosine 0.800)",
        "**#3 · S003** · match 70th percentile (cosine 0.700)",
        "**#4 · S004** · match 60th percentile (cosine 0.600)",
        "**#5 · S005** · match 50th percentile (cosine 0.500)",
    ]
    assert len(_views(at)) == 1 and len(at.image) == 5  # the query image + one thumbnail per hit


def test_finding_scores_are_percentiles_and_calibrated_probabilities_never_raw(fake):
    at = _app()
    table = at.table[0].value.reset_index()
    assert list(table.columns) == ["Finding", "Percentile among indexed cases"]
    assert list(table["Finding"]) == ["Pleural effusion", "Pneumothorax", "Cardiomegaly"]
    assert list(table["Percentile among indexed cases"]) == ["81st", "40th", "12th"]
    fake.scores = FindingScores({"pleural_effusion": 81.0, "cardiomegaly": 2.0, "support_device": 93.0},
                                {"pleural_effusion": 0.8134, "cardiomegaly": 0.02}, note="Calibrated.")
    at.run()
    table = at.table[0].value.reset_index()
    assert list(table.columns) == ["Finding", "Probability", "Percentile among indexed cases"]
    # calibrated findings first by probability; an uncalibrated one says so, in words
    assert list(table["Finding"]) == ["Pleural effusion", "Cardiomegaly", "Support device"]
    assert list(table["Probability"]) == ["81%", "2%", "not calibrated"]
    assert list(table["Percentile among indexed cases"]) == ["81st", "2nd", "93rd"]


def test_imported_models_show_name_source_and_licence(fake):
    fake.info = ModelInfo("BiomedCLIP-tiny", source="hf-hub:microsoft/BiomedCLIP", licence="MIT")
    at = _app()
    assert "Model: BiomedCLIP-tiny · source: hf-hub:microsoft/BiomedCLIP · licence: MIT" in [
        c.value for c in at.sidebar.caption]


def test_heatmap_phrase_starts_empty_for_an_image_query(fake):
    at = _app()
    assert at.text_input(key="phrase-case-S000").value == ""
    assert not [c for c in fake.calls if c[0] == "heatmap"]
    assert "heat-colour-bar" not in _whole_page(at)


def test_case_list_pages_through_and_searches_the_whole_index(monkeypatch, tmp_path, clear_streamlit_caches):
    lib = _install(FakeLibrary(n_cases=1500), monkeypatch, tmp_path)
    at = _app()
    assert len(at.sidebar.selectbox(key="case_id").options) == 50
    assert "Cases 1-50 of 1,500" in [c.value for c in at.sidebar.caption]
    at.sidebar.number_input(key="case_page").set_value(30).run()
    assert at.sidebar.selectbox(key="case_id").options[-1].startswith("S1499 ")  # the last case is reachable
    at.sidebar.text_input(key="case_filter").set_value("S11").run()
    options = at.sidebar.selectbox(key="case_id").options
    assert options[0].startswith("S110 ") and "Cases 1-50 of 110" in [c.value for c in at.sidebar.caption]
    at.sidebar.text_input(key="case_filter").set_value("nope").run()
    assert any("No case matches" in i.value for i in at.sidebar.info)
    assert lib.loads == [] or len(lib.loads) == 1


def test_open_as_query_makes_a_result_the_query_case(fake):
    at = _app()
    at.button(key="open-2-S002").click().run()
    assert not at.exception
    assert at.sidebar.radio(key="mode").value == "Case from index"
    assert "Case S002" in [h.value for h in at.subheader]
    assert fake.calls[-1][0] in ("finding_scores", "search_image")
    assert ("search_image", CT_FILE, "CT", "S002", None) in fake.calls


def test_highlights_for_a_case_query_follow_the_case_s_own_findings(fake):
    at = _app()  # S000 states a left pleural effusion
    reports = [m.value for m in at.markdown if "<mark>" in m.value or "FINDINGS" in m.value]
    marked = [s for r in reports for s in r.split("<mark>")[1:]]
    assert marked, reports
    for s in marked:
        text = s.split("</mark>")[0]
        assert "effusion" in text.lower() and "no " not in text.lower()


# -- warnings and messages -----------------------------------------------------------
def test_an_input_unlike_the_index_gets_one_warning_above_the_results_and_no_scores(fake):
    fake.warnings = ["It is a MR image; the index holds CT images."]
    at = _app()
    warnings = [w.value for w in at.warning if "unlike the cases in the index" in w.value]
    assert len(warnings) == 1 and "MR image" in warnings[0]
    assert not at.table  # no finding scores for such an input
    assert all(r.endswith(")") is False and "percentile" not in r for r in _ranked(at))
    assert any("Finding scores are not shown" in c.value for c in at.caption)


def test_unexpected_library_errors_become_messages_not_tracebacks(fake, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tensor size mismatch at /srv/models/x")

    monkeypatch.setattr(fake, "search_image", broken)
    at = _app()
    assert not at.exception
    assert [e.value for e in at.error] == ["The search failed: an unexpected error (details in the server log)."]
    assert len(_views(at)) == 1  # the case image is still shown
    assert "/srv/models" not in _texts(at)


def test_an_indexed_image_that_cannot_be_read_hides_its_path(fake, tmp_path):
    # MIMIC-CXR style layout: the folders carry the patient id
    fake.cases[0].image_path = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "view1.dcm"
    at = _app()
    assert not at.exception
    assert [e.value for e in at.error] == ["The image of this case cannot be read: file or directory not found."]
    assert "p10000032" not in _texts(at) and "view1" not in _texts(at)


# -- uploads -------------------------------------------------------------------------
def _dicom_with_identifiers() -> bytes:
    ds = pydicom.dcmread(CT_FILE)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-778899"
    ds.InstitutionName = "Saint Example Hospital"
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_dicom_upload_is_searched_and_neither_its_name_nor_identifiers_reach_the_page(fake):
    at = _upload(_app(), "Doe_Jane_PID-778899.dcm", _dicom_with_identifiers())  # exports often name files so
    assert not at.error
    assert "Uploaded image" in [h.value for h in at.subheader]
    searched = [c[1] for c in fake.calls if c[0] == "search_image"]
    assert searched and searched[-1].name == "upload.dcm"
    assert len(_ranked(at)) == 5
    page = _whole_page(at)
    assert "Current upload: DICOM file" in page and "Size: 128 x 128" in page
    for secret in ("Doe", "Jane", "PID-778899", "Saint Example", "upload.dcm", "medvl-upload-"):
        assert secret not in page, secret
    # the uploader was replaced by a fresh, empty one: no widget holds the file any more
    assert at.session_state["upload_gen"] == 1


def test_the_upload_survives_a_mode_switch_and_can_be_removed(fake):
    at = _upload(_app(), "ct.dcm", CT_FILE.read_bytes())
    _mode(at, "Free text")
    _mode(at, "Uploaded image")
    assert "Uploaded image" in [h.value for h in at.subheader] and len(_ranked(at)) == 5
    at.sidebar.button(key="remove_upload").click().run()
    assert any("Upload a DICOM file" in i.value for i in at.info)


def test_dicom_series_zip_upload_scrolls_slices_with_position_in_mm(fake):
    fake.index_dims = 3
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            ds = pydicom.dcmread(CT_FILE)
            ds.ImagePositionPatient = [0.0, 0.0, 10.0 * i]
            ds.InstanceNumber = i + 1
            ds.SOPInstanceUID = f"1.2.3.{i}"
            out = io.BytesIO()
            ds.save_as(out)
            zf.writestr(f"series/IM{i}", out.getvalue())
    at = _upload(_app(), "series.zip", buf.getvalue())
    assert not at.error, [e.value for e in at.error]
    slider = next(s for s in at.slider if s.label == "Slice")
    assert (slider.min, slider.max, slider.value) == (1, 3, 2)
    view = _views(at)[0]
    assert (view["slice"], view["n"]) == (1, 3)
    assert view["label"] == "Slice 2 of 3 · z = +10.0 mm"
    slider.set_value(3).run()
    assert _views(at)[0]["label"] == "Slice 3 of 3 · z = +20.0 mm"


def test_a_volume_for_a_radiograph_index_gets_one_message_and_no_scores_or_results(fake):
    at = _mode(_app(), "Uploaded image")
    fake.calls.clear()
    at = _upload(at, "brain.nii", (NIB_DATA / "anatomical.nii").read_bytes())
    infos = [i.value for i in at.info]
    assert any("3D volume and the index holds 2D images" in i for i in infos), infos
    assert not at.error and not at.table and not _ranked(at)
    assert not [c for c in fake.calls if c[0] in ("search_image", "finding_scores")]
    assert len(_views(at)) == 1  # shown for viewing


def test_nifti_upload_asks_for_the_modality_it_does_not_record(fake):
    fake.index_dims = 3
    at = _upload(_app(), "brain.nii", (NIB_DATA / "anatomical.nii").read_bytes())
    assert not at.error
    chooser = at.sidebar.selectbox(key="upload_modality")
    assert chooser.value == "unknown"
    chooser.set_value("CT").run()
    assert not at.exception and not at.error
    assert "Modality: CT (not recorded in the file)" in _texts(at)
    assert [c for c in fake.calls if c[0] == "finding_scores"][-1][2] == "CT"
    assert "lung" in next(s for s in at.selectbox if s.label == "Window").options


def test_a_4d_nifti_offers_a_choice_of_volume(fake):
    fake.index_dims = 3
    at = _upload(_app(), "fmri.nii.gz", (NIB_DATA / "example4d.nii.gz").read_bytes())
    assert not at.error, [e.value for e in at.error]
    frames = at.sidebar.selectbox(key="upload_frame")
    assert frames.options == ["1", "2"]
    frames.set_value(2).run()
    assert ("search_image" in [c[0] for c in fake.calls])
    assert [c for c in fake.calls if c[0] == "search_image"][-1][-1] == 1
    assert "Volume: 2" in _texts(at)


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "This type of file cannot be read here."),
        ("scan.dcm", b"\0" * 300, "This file is not a DICOM image"),
        ("empty.dcm", b"", "The file is empty."),
        ("vol.nii", CT_FILE.read_bytes(), "This file is not a readable NIfTI image."),
        ("cut.dcm", CT_FILE.read_bytes()[:20000], "The uploaded file is incomplete or damaged"),
    ],
)
def test_wrong_uploads_get_one_plain_message(fake, name, data, message):
    at = _mode(_app(), "Uploaded image")
    fake.calls.clear()
    _upload(at, name, data)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    page = _whole_page(at)
    for bad in (*FORBIDDEN, name):
        assert bad not in page, bad
    assert not [c for c in fake.calls if c[0] in ("search_image", "finding_scores")]


def test_too_large_upload_is_refused_in_words(fake, monkeypatch):
    monkeypatch.setenv("MEDVL_VIEWER_MAX_UPLOAD_MB", "0.01")
    at = _upload(_app(), "ct.dcm", CT_FILE.read_bytes())
    assert [e.value for e in at.error] == ["The file is too large for this viewer (at most 0 MiB). "
                                           "Upload a smaller file or one series."]


# -- free text -----------------------------------------------------------------------
def test_text_query_highlights_only_sentences_that_state_the_finding_on_that_side(fake):
    at = _mode(_app(), "Free text")
    assert any("Type a description" in i.value for i in at.info)
    at.sidebar.text_input(key="query_text").set_value("left pneumothorax").run()
    assert ("search_text", "left pneumothorax", "image", True) in fake.calls
    reports = {m.value.split("FINDINGS:</b> ")[1][:30]: m.value for m in at.markdown if "FINDINGS:</b>" in m.value}
    marked = [s.split("</mark>")[0] for r in reports.values() for s in r.split("<mark>")[1:]]
    # "Left PTX with a visible pleural line." and "Left PTX." are marked; "There is no
    # pneumothorax.", "Large right pneumothorax." and the INDICATION line are not.
    assert sorted(marked) == ["Left PTX with a visible pleural line.", "Left PTX."]
    # the heatmap phrase is the query's own text, over the best match, with its colour bar
    key = next(t.key for t in at.text_input if t.key and t.key.startswith("phrase-"))
    assert at.text_input(key=key).value == "left pneumothorax"
    assert ("heatmap", "left pneumothorax", None) in fake.calls
    assert "heat-colour-bar" in _whole_page(at)
    assert at.slider(key=key.replace("phrase-", "opacity-")).value == 0.35


def test_text_query_can_match_reports_and_skip_the_report_check(fake):
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("cardiomegaly").run()
    at.sidebar.radio(key="text_target").set_value("reports").run()
    at.sidebar.checkbox(key="use_reports").uncheck().run()
    assert [c for c in fake.calls if c[0] == "search_text"][-1] == ("search_text", "cardiomegaly", "report", False)


def test_nonsense_text_gets_a_warning_and_no_highlights(fake):
    fake.warnings = ["The text names no finding the viewer knows."]
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("asdfgh qwerty").run()
    assert any("unlike the cases in the index" in w.value for w in at.warning)
    assert not any("<mark>" in m.value for m in at.markdown)
    # no "typical match" figure and no heatmap next to that warning: they would contradict it
    assert not any("percentile" in r for r in _ranked(at)) and _ranked(at)[0].endswith("cosine 0.000")
    assert not [c for c in fake.calls if c[0] == "heatmap"]


def test_no_heatmap_means_one_plain_sentence(fake):
    fake.heat = Heatmap(None, None, "No heatmap: this model's local heads were never trained.")
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("effusion").run()
    assert [i.value for i in at.info] == ["No heatmap: this model's local heads were never trained."]
    assert "heat-colour-bar" not in _whole_page(at)


def test_heatmap_layer_position_and_opacity_reach_the_image(fake):
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("effusion").run()
    view = _views(at)[0]
    image = _pixels({"src": view["src"]})
    layer = _pixels({"src": view["heat"]})
    # the layer covers the image with its aspect; the fake map is hot in its top-left cell,
    # so the layer's hot part lies in the image's top-left quarter
    assert abs(layer.shape[0] / layer.shape[1] - image.shape[0] / image.shape[1]) < 0.02
    rows, cols = np.nonzero(layer > 255 * 0.2)
    assert rows.size and rows.max() < layer.shape[0] / 2 and cols.max() < layer.shape[1] / 2
    assert view["opacity"] == 0.35 and view["floor"] == 0.2 and len(view["lut"]) == 256
    key = next(s.key for s in at.slider if s.key and s.key.startswith("opacity-"))
    at.slider(key=key).set_value(1.0).run()
    again = _views(at)[0]
    assert again["opacity"] == 1.0 and again["src"] == view["src"] and again["heat"] == view["heat"]


def test_model_is_loaded_once_across_modes(fake):
    at = _app()
    for mode in ("Free text", "Uploaded image", "Case from index"):
        _mode(at, mode)
    assert len(fake.loads) == 1

"""The viewer's interactions, driven by Streamlit's AppTest against a fake library."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from streamlit.testing.v1 import AppTest
from viewer_fakes import CT_FILE, FakeBackend

from medvl_viewer import backend as backend_mod

VIEWER = Path(__file__).resolve().parents[2] / "apps" / "medvl_viewer" / "app.py"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
TIMEOUT = 30


@pytest.fixture
def fake(monkeypatch, tmp_path, clear_streamlit_caches):
    """A FakeBackend behind ``open_backend``; counts how often the app loads it."""
    fake = FakeBackend()
    loads: list[tuple[str, str]] = []

    def open_backend(index_dir, model_dir):
        loads.append((str(index_dir), str(model_dir)))
        return fake

    monkeypatch.setattr(backend_mod, "open_backend", open_backend)
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path / "index"))
    monkeypatch.setenv("MEDVL_VIEWER_MODEL", str(tmp_path / "model"))
    fake.loads = loads
    return fake


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


def _mode(at: AppTest, mode: str) -> AppTest:
    at.sidebar.radio(key="mode").set_value(mode).run()
    assert not at.exception, at.exception
    return at


def test_banner_and_missing_arguments(monkeypatch, clear_streamlit_caches):
    monkeypatch.delenv("MEDVL_VIEWER_INDEX", raising=False)
    monkeypatch.delenv("MEDVL_VIEWER_MODEL", raising=False)
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert "Research use only" in at.warning[0].value
    assert "No index given" in at.error[0].value and "medvl viewer --index IDX" in at.error[0].value


def test_missing_index_folder_is_a_clear_error(monkeypatch, tmp_path, clear_streamlit_caches):
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path / "nope"))
    monkeypatch.setenv("MEDVL_VIEWER_MODEL", str(tmp_path))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert "Research use only" in at.warning[0].value
    assert "nope: index folder does not exist" in at.error[0].value


def test_case_query_shows_image_and_top5_other_cases(fake):
    at = _app()
    assert "Research use only" in at.warning[0].value
    at.sidebar.selectbox(key="case_id").set_value("S002").run()
    assert ("search_image", CT_FILE) in fake.calls
    headers = [h.value for h in at.subheader]
    assert "Case S002" in headers and "Top 5 similar cases" in headers
    ranked = [m.value for m in at.markdown if m.value.startswith("**#")]
    # fixed fake scores 1.0, 0.9, ...: the case itself (S002) is dropped from its own results
    assert ranked == [
        "**#1 · S000** · similarity 1.000",
        "**#2 · S001** · similarity 0.900",
        "**#3 · S003** · similarity 0.700",
        "**#4 · S004** · similarity 0.600",
        "**#5 · S005** · similarity 0.500",
    ]
    assert len(at.image) == 1 + 5  # query image + one thumbnail per hit
    # zero-shot probabilities, highest first
    table = at.dataframe[0].value
    assert list(table["finding"]) == ["Pleural effusion", "Pneumothorax", "Cardiomegaly"]
    assert list(table["score"]) == [0.81, 0.4, 0.12]
    # the heatmap shows the top-scoring finding until the user types another phrase
    assert at.text_input(key="phrase-case-S002").value == "Pleural effusion"
    assert ("heatmap", "Pleural effusion") in fake.calls
    # manifest labels of a hit: positives and uncertain ones
    assert "Labels: Cardiomegaly · uncertain: Atelectasis" in [c.value for c in at.caption]


def test_no_finding_label_is_shown_and_no_labels_means_no_caption(fake):
    at = _app()
    at.sidebar.slider(key="k").set_value(7).run()
    # hits S001..S007: only S001 and S007 carry labels, so exactly two label captions
    labels = [c.value for c in at.caption if c.value.startswith("Labels")]
    assert labels == ["Labels: Cardiomegaly · uncertain: Atelectasis", "Labels: No finding"]


def test_number_of_results_follows_the_slider(fake):
    at = _app()
    at.sidebar.slider(key="k").set_value(3).run()
    assert [h.value for h in at.subheader if h.value.startswith("Top")] == ["Top 3 similar cases"]


def test_model_and_index_are_loaded_once(fake):
    at = _app()
    for mode in ("Free text", "Uploaded image", "Case from index"):
        _mode(at, mode)
    assert len(fake.loads) == 1


def test_window_preset_sets_level_and_width(fake):
    at = _app()
    preset = at.selectbox(key="preset-case-S000")
    assert preset.options[:3] == ["File window 1", "lung", "bone"]
    assert [n.value for n in at.number_input] == [40.0, 400.0]
    preset.set_value("lung").run()
    assert [n.value for n in at.number_input] == [-600.0, 1500.0]


def test_text_query_ranks_reports_and_highlights_best_sentences(fake):
    at = _mode(_app(), "Free text")
    assert any("Type a description" in i.value for i in at.info)
    at.sidebar.text_input(key="query_text").set_value("left pleural effusion").run()
    assert ("search_text", "left pleural effusion", "image") in fake.calls
    ranked = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert ranked[0] == "**#1 · S000** · similarity 1.000"
    report = next(m.value for m in at.markdown if "Heart size is normal" in m.value)
    assert "<mark>Small left pleural effusion.</mark>" in report
    # the heatmap of the query phrase is drawn over the best match
    assert ("heatmap", "left pleural effusion") in fake.calls
    assert at.slider(key="opacity-text-S000").value == 0.5


def test_text_query_can_match_reports_instead_of_images(fake):
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("cardiomegaly").run()
    at.sidebar.radio(key="text_target").set_value("reports").run()
    assert [c for c in fake.calls if c[0] == "search_text"][-1] == ("search_text", "cardiomegaly", "report")


def test_large_index_case_picker_filters_by_study_id(monkeypatch, tmp_path, clear_streamlit_caches):
    big = FakeBackend(n_cases=1200)
    monkeypatch.setattr(backend_mod, "open_backend", lambda index_dir, model_dir: big)
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tmp_path))
    at = _app()
    assert len(at.sidebar.selectbox(key="case_id").options) == 500
    at.sidebar.text_input(key="case_filter").set_value("S11").run()
    expected = [f"S{i}" for i in range(110, 120)] + [f"S{i}" for i in range(1100, 1200)]
    assert at.sidebar.selectbox(key="case_id").options == expected
    at.sidebar.text_input(key="case_filter").set_value("nope").run()
    assert any("No study id contains 'nope'" in i.value for i in at.info)


def test_heatmap_opacity_changes_the_shown_image(fake):
    at = _mode(_app(), "Free text")
    at.sidebar.text_input(key="query_text").set_value("effusion").run()
    before = at.image[0].value
    at.slider(key="opacity-text-S000").set_value(1.0).run()
    assert at.image[0].value != before


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    _mode(at, "Uploaded image")
    at.sidebar.file_uploader(key="upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def test_dicom_upload_queries_by_image_without_showing_identifiers(fake, tmp_path):
    ds = pydicom.dcmread(CT_FILE)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-778899"
    ds.InstitutionName = "Saint Example Hospital"
    buf = io.BytesIO()
    ds.save_as(buf)
    at = _upload(_app(), "Doe_Jane_PID-778899.dcm", buf.getvalue())  # exports often name files so
    assert not at.error
    assert "Uploaded image" in [h.value for h in at.subheader]
    searched = [c[1] for c in fake.calls if c[0] == "search_image"]
    assert searched and searched[-1].name == "upload.dcm"
    assert len([m for m in at.markdown if m.value.startswith("**#")]) == 5
    page = _texts(at)
    assert "Modality: CT" in page and "Size: 128 x 128" in page
    for secret in ("Doe", "Jane", "PID-778899", "Saint Example", ds.StudyDate):
        assert secret not in page


def test_dicom_series_zip_upload_shows_a_slice_slider(fake):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"series/IM{i}", CT_FILE.read_bytes())
    at = _upload(_app(), "series.zip", buf.getvalue())
    assert not at.error
    slider = next(s for s in at.slider if s.label == "Slice")
    assert (slider.min, slider.max, slider.value) == (0, 2, 1)


def test_volume_heatmap_follows_the_slice_slider(fake):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"series/IM{i}", CT_FILE.read_bytes())
    at = _upload(_app(), "series.zip", buf.getvalue())
    key = next(s.key for s in at.slider if s.label == "Slice").removeprefix("slice-")

    def shown(slice_index: int, alpha: float) -> list[str]:
        at.slider(key=f"slice-{key}").set_value(slice_index)  # fresh elements after each run
        at.slider(key=f"opacity-{key}").set_value(alpha)
        at.run()
        assert not at.exception
        return at.image[0].value  # media URLs are content hashes: equal URLs, equal pixels

    # the fake map is hot in the first slice only (slices are identical copies here)
    assert shown(0, 1.0) != shown(0, 0.0)
    assert shown(2, 1.0) == shown(2, 0.0)


def test_nifti_upload_asks_for_the_modality_it_does_not_record(fake):
    at = _upload(_app(), "brain.nii", (NIB_DATA / "anatomical.nii").read_bytes())
    assert not at.error
    assert "Modality: OT" in _texts(at)
    assert any("Zero-shot scores are not available" in i.value for i in at.info)
    chooser = at.sidebar.selectbox(key="upload_modality")
    assert chooser.value == "unknown"
    chooser.set_value("CT").run()
    assert not at.exception and not at.error
    assert "Modality: CT (not recorded in the file)" in _texts(at)
    assert [c for c in fake.calls if c[0] == "zero_shot"][-1][2] == "CT"
    preset = next(s for s in at.selectbox if s.label == "Window preset")
    assert "lung" in preset.options  # CT presets now apply
    assert at.dataframe[0].value["finding"][0] == "Pleural effusion"


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "Upload refused: the uploaded file: unsupported file type '.png'"),
        ("scan.dcm", b"\0" * 300, "Upload refused: the uploaded file [magic bytes]: not a DICOM Part 10 file"),
        ("vol.nii", CT_FILE.read_bytes(), "Upload refused: the uploaded file [sizeof_hdr]: not a NIfTI image"),
    ],
)
def test_wrong_uploads_get_a_clear_message(fake, name, data, message):
    at = _mode(_app(), "Uploaded image")
    fake.calls.clear()
    _upload(at, name, data)
    assert at.error[0].value.startswith(message)
    assert not [c for c in fake.calls if c[0] in ("read_image", "search_image")]


def test_bad_upload_limit_setting_is_a_message(fake, monkeypatch):
    monkeypatch.setenv("MEDVL_VIEWER_MAX_UPLOAD_MB", "lots")
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error[0].value.startswith("Cannot start the viewer: [--k / --max-upload-mb]: invalid viewer argument")
    assert not fake.loads


def test_too_large_upload_is_refused(fake, monkeypatch):
    monkeypatch.setenv("MEDVL_VIEWER_MAX_UPLOAD_MB", "0.01")
    at = _upload(_app(), "ct.dcm", CT_FILE.read_bytes())
    assert "file is too large" in at.error[0].value and "at most 0 MiB" in at.error[0].value


def test_unreadable_dicom_gets_a_clear_message(fake):
    truncated = CT_FILE.read_bytes()[:2000]  # DICM magic intact, pixel data cut off
    at = _upload(_app(), "cut.dcm", truncated)
    assert at.error[0].value.startswith("Cannot read the uploaded file:")
    assert "upload.dcm" in at.error[0].value


def test_unexpected_library_errors_become_messages_not_tracebacks(fake, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tensor size mismatch")

    monkeypatch.setattr(fake, "search_image", broken)
    monkeypatch.setattr(fake, "zero_shot", broken)
    monkeypatch.setattr(fake, "heatmap", broken)
    at = _app()
    assert not at.exception
    messages = [e.value for e in at.error]
    assert "Zero-shot scoring failed: unexpected RuntimeError: tensor size mismatch" in messages
    assert "Search failed: unexpected RuntimeError: tensor size mismatch" in messages
    assert len(at.image) == 1  # the case image is still shown


def test_an_indexed_image_that_cannot_be_read_hides_its_path(fake, tmp_path):
    # MIMIC-CXR style layout: the folders carry the patient id
    missing = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "view1.dcm"
    fake.cases[0].image_path = missing

    def search_image(image_path, k):  # the real index names the file it cannot read
        from medvl.errors import CaseIndexError

        raise CaseIndexError("query image not found", path=image_path)

    fake.search_image = search_image
    at = _app()
    assert not at.exception
    message = at.error[0].value
    assert message.startswith("Cannot read case S000: <image>")
    assert "Search failed: <image>: query image not found" in [e.value for e in at.error]
    assert "p10000032" not in _texts(at)


def test_failure_messages_redact_longest_first():
    from medvl_viewer.panels import failure_message
    from medvl.errors import ImageReadError

    exc = ImageReadError("cannot read", path="/data/p10/p10000032/a.dcm")
    assert failure_message("Cannot read case X", exc, ("/data/p10", "/data/p10/p10000032/a.dcm")) == (
        "Cannot read case X: <image>: cannot read"
    )
    assert failure_message("Search failed", RuntimeError("boom")) == "Search failed: unexpected RuntimeError: boom"


def test_an_image_of_unexpected_shape_is_a_message(fake, monkeypatch):
    from viewer_fakes import FakeImage

    monkeypatch.setattr(fake, "read_image", lambda path: FakeImage(np.zeros((4, 4, 3, 2), np.float32), (1.0,) * 3, "MR"))
    at = _app()
    assert not at.exception
    assert "Cannot display an image of shape (4, 4, 3, 2)" in at.error[0].value

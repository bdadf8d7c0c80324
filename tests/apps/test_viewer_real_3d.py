"""The viewer on volumes with the real library: CT NIfTI and DICOM series, tiny 3D model."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medvl.index import CaseIndex

VIEWER = Path(__file__).resolve().parents[2] / "apps" / "medvl_viewer" / "app.py"
TIMEOUT = 120


@pytest.fixture(scope="module")
def cases(tiny_viewer_data_3d) -> dict[str, Path]:
    """study id -> image path (a .nii.gz file or a DICOM series folder)."""
    index = CaseIndex.open(tiny_viewer_data_3d.index_dir)
    try:
        return {s: Path(index.get(s).image_path) for s in index.study_ids()}
    finally:
        index.close()


@pytest.fixture
def app(tiny_viewer_data_3d, monkeypatch, clear_streamlit_caches) -> AppTest:
    monkeypatch.setenv("MEDVL_VIEWER_INDEX", str(tiny_viewer_data_3d.index_dir))
    monkeypatch.delenv("MEDVL_VIEWER_MODEL", raising=False)  # the index records its model
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _views(at: AppTest) -> list[dict]:
    import json

    return [json.loads(e.proto.json) for e in at.get("bidi_component")
            if e.proto.component_name == "medvl_viewer.slice_view"]


def _texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info") for e in getattr(at, kind))


def test_nifti_ct_case_has_slices_ct_windows_and_ct_findings(app, cases):
    import nibabel as nib

    study = next(s for s, p in cases.items() if p.name.endswith(".nii.gz"))
    app.sidebar.selectbox(key="case_id").set_value(study).run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    n_z = nib.as_closest_canonical(nib.load(cases[study])).shape[2]
    slider = app.slider(key=f"slice-case-{study}")
    assert (slider.min, slider.max, slider.value) == (1, n_z, n_z // 2 + 1)
    # NIfTI records no modality: the index's CT applies (windows, prompt set)
    assert "Modality: CT (not recorded in the file)" in _texts(app)
    assert "lung" in app.selectbox(key=f"preset-case-{study}").options
    from medvl.eval.prompts import prompt_set_for_modality
    from medvl_viewer.panels import finding_display

    table = app.table[0].value.reset_index()
    assert set(table["Finding"]) == {finding_display(f) for f in prompt_set_for_modality("CT").findings}
    # no heatmap until a phrase is chosen; moving through slices changes the image and its z
    assert app.text_input(key=f"phrase-case-{study}").value == ""
    before = _views(app)[0]
    app.slider(key=f"slice-case-{study}").set_value(1).run()
    after = _views(app)[0]
    assert after["src"] != before["src"] and after["label"].startswith(f"Slice 1 of {n_z} · z = ")
    assert [m.value for m in app.subheader if m.value.startswith("Top")] == [f"Top {len(cases) - 1} similar cases"]


def test_dicom_series_zip_upload_finds_its_own_study(app, cases):
    study, folder = next((s, p) for s, p in cases.items() if p.is_dir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"export/{study}/{f.name}")
    app.sidebar.radio(key="mode").set_value("Uploaded image").run()
    app.sidebar.file_uploader(key="upload-0").set_value(("series.zip", buf.getvalue(), "application/zip")).run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    ranked = [m.value.replace("\\", "") for m in app.markdown if m.value.startswith("**#")]  # ids Markdown-escaped
    assert ranked[0].startswith(f"**#1 · {study}**") and ranked[0].endswith("(cosine 1.000)")
    assert "Modality: CT" in _texts(app)
    assert next(s for s in app.slider if s.label == "Slice").max >= 1


def test_volume_heatmap_spans_the_whole_volume(tiny_viewer_data_3d, cases):
    from medvl_viewer.backend import open_backend

    backend = open_backend(tiny_viewer_data_3d.index_dir)
    path = next(p for p in cases.values() if p.name.endswith(".nii.gz"))
    heat = backend.heatmap(path, "nodule").array
    # data.spacing is unset: the volume is resized to the input grid, so no padding to crop
    assert heat.shape == (32, 32, 32)
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_volume_heatmap_drops_the_padding_of_a_resampled_volume(tiny_viewer_data_3d, cases, tmp_path):
    import shutil

    import nibabel as nib

    import medvl
    from medvl.index import build_index
    from medvl.inference.preprocessing import Preprocessing
    from medvl_viewer.backend import open_backend

    # with data.spacing set, a volume is resampled to 20 mm voxels and padded to 32^3: a
    # model directory whose preprocessing says so, and an index built with it
    shutil.copytree(tiny_viewer_data_3d.model_dir, tmp_path / "model")
    (tmp_path / "model" / "preprocessing.json").unlink()
    Preprocessing.from_data_config({"dims": 3, "image_size": [32, 32, 32], "spacing": [20.0, 20.0, 20.0]}).save(
        tmp_path / "model")
    build_index(medvl.load(tmp_path / "model"), tiny_viewer_data_3d.manifest, tmp_path / "index",
                config={"progress": False}, model_dir=tmp_path / "model")
    backend = open_backend(tmp_path / "index")
    path = next(p for p in cases.values() if p.name.endswith(".nii.gz"))
    img = nib.as_closest_canonical(nib.load(path))
    (nx, ny, nz), (sx, sy, sz) = img.shape[:3], img.header.get_zooms()[:3]
    # by hand: model layout (z, -y, -x), each axis n * spacing / 20 mm, rounded
    expected = tuple(int(np.floor(n * s / 20.0 + 0.5)) for n, s in ((nz, sz), (ny, sy), (nx, sx)))
    assert all(e < 32 for e in expected)
    assert backend.heatmap(path, "nodule").array.shape == expected

"""De-identification: identifiers gone, what models need kept, series kept together."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pydicom
import pytest
from io_factory import write_series

from medvl.io import deid_command, read_image
from medvl.io.deid import deidentify, residual_identifiers

ORIGINALS = ["Doe", "Jane", "PID-12345", "19700101", "20200102", "General Hospital", "ACC999", "Smith"]


def _identified_series(folder, n=4):
    vol = np.random.default_rng(0).integers(0, 1000, size=(n, 6, 5)).astype(np.int16)
    info = write_series(folder, vol, orientation=(1, 0, 0, 0, 0, -1))
    for f in info["files"]:
        ds = pydicom.dcmread(f)
        ds.StudyDescription = "CT chest Jane Doe"
        ds.PatientAge = "052Y"
        ds.ReferringPhysicianName = "Smith^John"
        ds.add_new(0x00291010, "LO", "Doe private note")
        ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
        ds.save_as(f)
    return info


def _dcm_files(folder):
    return sorted(p for p in folder.rglob("*.dcm"))


def test_series_deidentified_and_still_readable(tmp_path):
    info = _identified_series(tmp_path / "Doe_Jane")
    report = deidentify(tmp_path / "Doe_Jane", tmp_path / "out", seed="secret")
    assert len(report.written) == 4 and not report.skipped
    outputs = _dcm_files(tmp_path / "out")
    assert len(outputs) == 4
    series_dirs = {p.parent for p in outputs}
    assert len(series_dirs) == 1, "one series must stay one series"
    originals_uids = {str(pydicom.dcmread(f).SeriesInstanceUID) for f in info["files"]}
    for path in outputs:
        assert not any(o in str(path.relative_to(tmp_path / "out")) for o in ORIGINALS)
        ds = pydicom.dcmread(path)
        assert residual_identifiers(ds, ORIGINALS) == []
        assert str(ds.SeriesInstanceUID) not in originals_uids
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not any(e.tag.is_private for e in ds)
        assert (0x6000, 0x3000) not in ds
        assert ds.get("StudyDate", "") == "" and "StudyDescription" not in ds
        for type2 in ("PatientName", "ReferringPhysicianName", "AccessionNumber", "StudyDate"):
            assert type2 in ds and not ds[type2].value  # present and empty: the file stays valid
        assert ds.PatientID and ds.PatientID != "PID-12345"  # a pseudonym for patient-level splits
    # what models need is untouched: same volume, geometry and windows
    before, after = read_image(tmp_path / "Doe_Jane"), read_image(next(iter(series_dirs)))
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_allclose(after.affine, before.affine)
    assert after.windows == before.windows and after.spacing == before.spacing
    summary = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    assert summary["written"] == 4 and "Doe" not in json.dumps(summary)


def test_seed_makes_pseudonyms_reproducible(tmp_path):
    _identified_series(tmp_path / "in", n=2)
    deidentify(tmp_path / "in", tmp_path / "a", seed="k1")
    deidentify(tmp_path / "in", tmp_path / "b", seed="k1")
    deidentify(tmp_path / "in", tmp_path / "c", seed="k2")
    rel = lambda d: sorted(str(p.relative_to(d)) for p in _dcm_files(d))
    assert rel(tmp_path / "a") == rel(tmp_path / "b")
    assert rel(tmp_path / "a") != rel(tmp_path / "c")


def test_burned_in_annotation_is_refused(tmp_path):
    info = _identified_series(tmp_path / "in", n=2)
    ds = pydicom.dcmread(info["files"][0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(info["files"][0])
    (tmp_path / "in" / "readme.txt").write_text("not dicom")
    report = deidentify(tmp_path / "in", tmp_path / "out")
    reasons = sorted(r["reason"].split(":")[0] for r in report.skipped)
    assert reasons == ["burned-in annotation", "not DICOM"]
    assert len(report.written) == 1
    assert len(deidentify(tmp_path / "in", tmp_path / "out2", allow_burned_in=True).written) == 2


def test_real_file_identifiers_removed(tmp_path, testdata):
    src = testdata("MR_small.dcm")
    original = pydicom.dcmread(src)
    # (InstitutionName "TOSHIBA" is also in Manufacturer, which is kept; the keyword
    # check in residual_identifiers covers InstitutionName itself)
    assert original.InstitutionName
    names = [str(original.PatientName), str(original.get("PatientID", "")), str(original.get("StudyDate", ""))]
    names = [n for n in names if len(n) > 2]
    assert names, "the reference file carries identifiers to remove"
    deidentify(src, tmp_path / "out")
    (out,) = _dcm_files(tmp_path / "out")
    assert residual_identifiers(pydicom.dcmread(out), names) == []
    np.testing.assert_array_equal(read_image(out).array, read_image(src).array)


def test_cli_command(tmp_path, capsys):
    _identified_series(tmp_path / "in", n=3)
    parser = argparse.ArgumentParser()
    deid_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "in"), str(tmp_path / "out"), "--dates", "shift"])
    assert deid_command.run(args) == 0
    assert "de-identified 3 file(s)" in capsys.readouterr().out
    ds = pydicom.dcmread(_dcm_files(tmp_path / "out")[0])
    assert ds.StudyDate and ds.StudyDate != "20200102"  # shifted, not removed
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]


def test_missing_input(tmp_path):
    from medvl.errors import MedvlError

    with pytest.raises(MedvlError, match="not found"):
        deidentify(tmp_path / "nothing", tmp_path / "out")


def test_profile_tables_use_real_dicom_keywords():
    from medvl.io.deid import _check_keywords

    _check_keywords()


def test_preamble_less_file_is_deidentified(tmp_path, testdata):
    """Old writers omit the DICM preamble; such files still carry dates and names."""
    src = testdata("OT-PAL-8-face.dcm")
    original = pydicom.dcmread(src, force=True)
    assert original.StudyDate  # '1996.10.29' in the source
    report = deidentify(src, tmp_path / "out")
    assert len(report.written) == 1, report.skipped
    (out,) = _dcm_files(tmp_path / "out")
    ds = pydicom.dcmread(out)
    assert residual_identifiers(ds, [str(original.StudyDate)]) == []
    assert ds.PatientIdentityRemoved == "YES"
    np.testing.assert_array_equal(read_image(out).array, read_image(src).array)


def test_ultrasound_without_burned_in_flag_is_listed_for_review(tmp_path, testdata):
    src = testdata("US1_UNCR.dcm")
    assert pydicom.dcmread(src, stop_before_pixels=True).get("BurnedInAnnotation") != "NO"
    report = deidentify(src, tmp_path / "out")
    assert report.check_pixels == report.written and len(report.written) == 1
    summary = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    assert summary["check_pixels_for_burned_in_text"] == report.written

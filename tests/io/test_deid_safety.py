"""De-identification never loses or leaks: what a review over real files found.

``medvl deid`` over pydicom's and pydicom-data's 244 files reported 230 written while
157 were on disk (outputs named by SOP Instance UID overwrote each other), kept
OtherPatientIDs, and failed on files without proper file meta with an AttributeError.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from medvl.errors import MedvlError
from medvl.io import deid_command
from medvl.io.deid import deidentify


def _dcm(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


# Real variants that share one SOP Instance UID (the same object in other encodings).
SAME_UID = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"]


def test_inputs_sharing_a_sop_instance_uid_each_get_their_own_output(tmp_path: Path, testdata) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in SAME_UID:
        shutil.copy(testdata(name), src / name)
    assert len({str(pydicom.dcmread(src / n).SOPInstanceUID) for n in SAME_UID}) == 1
    report = deidentify(src, tmp_path / "out", seed="k")
    on_disk = _dcm(tmp_path / "out")
    assert len(report.written) == len(on_disk) == len(SAME_UID)
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in on_disk) == sorted(report.written)
    # every output is a different input (each encoding survived), and the collisions are reported
    syntaxes = {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in on_disk}
    assert len(syntaxes) == len(SAME_UID)
    assert len(report.collisions) == len(SAME_UID) - 1
    summary = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    assert summary["written"] == len(on_disk) and summary["same_sop_instance_uid"] == len(SAME_UID) - 1


def test_written_count_equals_files_on_disk_over_every_real_file(tmp_path: Path) -> None:
    """The review's run: every DICOM file pydicom and pydicom-data ship."""
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    src = tmp_path / "in"
    for i, root in enumerate(roots):
        shutil.copytree(root, src / str(i))
    n_inputs = sum(1 for p in src.rglob("*") if p.is_file())
    report = deidentify(src, tmp_path / "out", seed="k")
    on_disk = _dcm(tmp_path / "out")
    assert len(report.written) == len(on_disk)
    assert len(report.written) + len(report.skipped) == n_inputs
    # the refusals say why, in words (no raw exception class names)
    for item in report.skipped:
        assert not item["reason"].split(":")[-1].strip().startswith(("AttributeError", "KeyError", "TypeError"))
    # every written file is a proper Part 10 file whose meta agrees with its data set
    for p in on_disk:
        ds = pydicom.dcmread(p)  # no force: preamble and meta present
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID


def test_files_without_proper_file_meta(tmp_path: Path, testdata) -> None:
    """Missing transfer syntax in the meta is completed; an object with no SOP Class or Instance
    UID at all cannot be a Part 10 file and is refused with that reason."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"):
        shutil.copy(testdata(name), src / name)
    # a real CT slice whose meta lost its transfer syntax and SOP UIDs
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    for kw in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        del ds.file_meta[kw]
    ds.save_as(src / "ct_bad_meta.dcm", enforce_file_format=False, implicit_vr=False, little_endian=True)
    report = deidentify(src, tmp_path / "out")
    assert len(report.written) == 1
    out = pydicom.dcmread(tmp_path / "out" / report.written[0])
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    reasons = sorted(item["reason"] for item in report.skipped)
    assert len(reasons) == 3 and all(r.startswith("no SOP Class or Instance UID") for r in reasons)


def test_other_patient_ids_are_removed(tmp_path: Path, testdata) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    ds.OtherPatientIDs = ["MRN-778899", "OLD-445566"]
    item = Dataset()
    item.PatientID = "MRN-112233"
    item.IssuerOfPatientID = "St Elsewhere"
    ds.OtherPatientIDsSequence = [item]
    ds.save_as(src / "ct.dcm")
    report = deidentify(src, tmp_path / "out")
    out_path = tmp_path / "out" / report.written[0]
    out = pydicom.dcmread(out_path)
    assert "OtherPatientIDs" not in out and "OtherPatientIDsSequence" not in out
    raw = out_path.read_bytes()
    for needle in (b"MRN-778899", b"OLD-445566", b"MRN-112233", b"St Elsewhere"):
        assert needle not in raw


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_writing_into_the_input_folder_is_refused(tmp_path: Path, testdata, where: str) -> None:
    src = tmp_path / "scans"
    src.mkdir()
    shutil.copy(testdata("CT_small.dcm"), src / "Doe_Jane.dcm")
    dst = {"same": src, "inside": src / "deid", "around": tmp_path}[where]
    with pytest.raises(MedvlError, match="input") as info:
        deidentify(src, dst)
    assert info.value.field == "output"
    assert [p.name for p in src.iterdir()] == ["Doe_Jane.dcm"]  # nothing written next to the originals


def test_cli_output_that_is_a_file_is_one_line(tmp_path: Path, testdata) -> None:
    from medvl.cli import main

    out = tmp_path / "out"
    out.write_text("not a folder")
    assert main(["deid", str(testdata("CT_small.dcm")), str(out)]) == 2
    args = argparse.Namespace(input=str(testdata("CT_small.dcm")), output=str(out), seed=None, dates="remove",
                              allow_burned_in=False)
    with pytest.raises(MedvlError, match="not a folder"):
        deid_command.run(args)

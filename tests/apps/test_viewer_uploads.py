"""Upload validation: real DICOM/NIfTI files pass, wrong, oversized and unsafe ones are refused."""

from __future__ import annotations

import gzip
import io
import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medvl_viewer.uploads import (
    MIB,
    UploadError,
    UploadKind,
    UploadLimits,
    is_nifti_header,
    stage_upload,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
CT = Path(get_testdata_file("CT_small.dcm", download=False))
MR = Path(get_testdata_file("MR_small.dcm", download=False))


def _never() -> bytes:
    raise AssertionError("the file was read although it should have been refused first")


def _stage(name: str, data: bytes, tmp_path: Path, **limits):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return stage_upload(name, len(data), lambda: data, work, UploadLimits(**limits))


def test_dicom_file_is_staged_unchanged(tmp_path):
    staged = _stage("ct.dcm", CT.read_bytes(), tmp_path)
    assert staged.kind is UploadKind.DICOM
    assert staged.path.read_bytes() == CT.read_bytes()
    assert pydicom.dcmread(staged.path).Modality == "CT"


def test_dicom_without_extension_is_accepted(tmp_path):
    assert _stage("IM0001", MR.read_bytes(), tmp_path).kind is UploadKind.DICOM


def test_wrong_extension_refused_before_reading(tmp_path):
    with pytest.raises(UploadError, match=r"photo\.png.*unsupported file type '\.png'.*expected a DICOM"):
        stage_upload("photo.png", 10, _never, tmp_path)


def test_too_large_refused_before_reading(tmp_path):
    with pytest.raises(UploadError, match=r"big\.dcm: file is too large \(3\.0 MiB\).*at most 2 MiB"):
        stage_upload("big.dcm", 3 * MIB, _never, tmp_path, UploadLimits(max_bytes=2 * MIB))


def test_declared_size_that_lies_is_caught_after_reading(tmp_path):
    data = b"\0" * (2 * MIB + 1)
    with pytest.raises(UploadError, match="too large"):
        stage_upload("x.dcm", 10, lambda: data, tmp_path, UploadLimits(max_bytes=2 * MIB))


def test_dcm_extension_without_dicm_magic_refused(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 300
    with pytest.raises(UploadError, match=r"scan\.dcm \[magic bytes\]: not a DICOM Part 10 file"):
        _stage("scan.dcm", png, tmp_path)


def test_nifti1_file_is_staged_and_readable(tmp_path):
    src = NIB_DATA / "anatomical.nii"
    staged = _stage("brain.nii", src.read_bytes(), tmp_path)
    assert staged.kind is UploadKind.NIFTI
    assert nib.load(staged.path).shape == nib.load(src).shape


def test_nifti2_gz_is_decompressed_and_readable(tmp_path):
    src = NIB_DATA / "example_nifti2.nii.gz"
    staged = _stage("vol.nii.gz", src.read_bytes(), tmp_path)
    img = nib.load(staged.path)
    assert isinstance(img, nib.Nifti2Image)
    np.testing.assert_array_equal(img.get_fdata(), nib.load(src).get_fdata())


def test_nifti_header_detection_matches_nibabel_in_both_byte_orders():
    headers = [(nib.Nifti1Header, "<"), (nib.Nifti1Header, ">"), (nib.Nifti2Header, "<"), (nib.Nifti2Header, ">")]
    for cls, order in headers:
        block = cls(endianness=order).binaryblock
        assert is_nifti_header(block), (cls.__name__, order)
    assert not is_nifti_header(b"\0" * 348)
    assert not is_nifti_header(CT.read_bytes()[:544])


def test_nii_extension_with_dicom_content_refused(tmp_path):
    with pytest.raises(UploadError, match=r"\[sizeof_hdr\]: not a NIfTI image"):
        _stage("x.nii", CT.read_bytes(), tmp_path)


def test_gz_of_something_else_refused(tmp_path):
    with pytest.raises(UploadError, match="does not hold a NIfTI image"):
        _stage("x.nii.gz", gzip.compress(b"hello world" * 100), tmp_path)


def test_truncated_gzip_refused(tmp_path):
    data = (NIB_DATA / "example4d.nii.gz").read_bytes()
    with pytest.raises(UploadError, match="gzip stream is corrupt"):
        _stage("x.nii.gz", data[: len(data) // 2], tmp_path)


def test_gzip_bomb_stops_at_the_limit(tmp_path):
    bomb = gzip.compress(b"\0" * (8 * MIB))
    with pytest.raises(UploadError, match="decompresses to more than the allowed size"):
        _stage("bomb.nii.gz", bomb, tmp_path, max_unpacked_bytes=1 * MIB)
    assert (tmp_path / "work" / "upload.nii").stat().st_size <= 1 * MIB


def _zip(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_series_keeps_only_dicom_members_under_generated_names(tmp_path):
    slices = {f"study/series1/IM{i}": CT.read_bytes() for i in range(3)}
    data = _zip({**slices, "study/README.txt": b"notes", "__MACOSX/._IM0": b"junk"})
    staged = _stage("series.zip", data, tmp_path)
    assert staged.kind is UploadKind.DICOM_SERIES and staged.n_files == 3
    files = sorted(staged.path.iterdir())
    assert [f.name for f in files] == ["00000.dcm", "00001.dcm", "00002.dcm"]
    assert all(f.read_bytes() == CT.read_bytes() for f in files)


@pytest.mark.parametrize("member", ["../evil.dcm", "a/../../evil.dcm", "/tmp/evil.dcm", "C:/evil.dcm", "..\\evil.dcm"])
def test_zip_slip_member_refused_and_nothing_written_outside(tmp_path, member):
    data = _zip({"ok/IM0": CT.read_bytes(), member: CT.read_bytes()})
    with pytest.raises(UploadError, match="unsafe path"):
        _stage("slip.zip", data, tmp_path)
    assert list(tmp_path.rglob("evil*")) == []


def test_zip_symlink_member_refused(tmp_path):
    with pytest.raises(UploadError, match="symbolic link"):
        _stage("link.zip", _zip({"IM0": CT.read_bytes()}, symlinks=("IM1",)), tmp_path)


def test_zip_member_count_limit(tmp_path):
    data = _zip({f"IM{i}": b"x" for i in range(11)})
    with pytest.raises(UploadError, match=r"zip lists 11 entries \(expected at most 10\)"):
        _stage("many.zip", data, tmp_path, max_zip_members=10)


def test_zip_total_size_limit(tmp_path):
    data = _zip({"IM0": CT.read_bytes() + b"\0" * (2 * MIB)})
    with pytest.raises(UploadError, match="zip unpacks to"):
        _stage("big.zip", data, tmp_path, max_unpacked_bytes=1 * MIB)


def test_zip_without_dicom_refused(tmp_path):
    with pytest.raises(UploadError, match="zip holds no DICOM files"):
        _stage("notes.zip", _zip({"a.txt": b"hello"}), tmp_path)


def test_zip_extension_with_other_content_refused(tmp_path):
    with pytest.raises(UploadError, match="not a zip archive"):
        _stage("x.zip", CT.read_bytes(), tmp_path)


def test_corrupt_zip_refused(tmp_path):
    data = _zip({"IM0": CT.read_bytes()})
    with pytest.raises(UploadError, match="zip"):
        _stage("x.zip", data[:200], tmp_path)


def test_label_replaces_the_file_name_in_messages(tmp_path):
    with pytest.raises(UploadError) as info:
        stage_upload("DOE_JANE_chest.png", 10, _never, tmp_path, label="the uploaded file")
    assert str(info.value).startswith("the uploaded file: unsupported file type '.png'")
    assert "DOE" not in str(info.value)
    # the extension still comes from the real name
    data = CT.read_bytes()
    staged = stage_upload("DOE_JANE.dcm", len(data), lambda: data, tmp_path, label="the uploaded file")
    assert staged.kind is UploadKind.DICOM and "DOE" not in str(staged.path)

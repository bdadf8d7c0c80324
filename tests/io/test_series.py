"""Series assembly: grouping, ordering along the normal, spacing from positions, errors."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from io_factory import make_dataset, oblique_orientation, save, write_series

from medvl.errors import ImageReadError, SeriesError
from medvl.io import read_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume(n=7, rows=12, cols=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-200, 3000, size=(n, rows, cols)).astype(np.int16)


def _reference(volume, affine_lps, intercept=-1024.0):
    """What nibabel gives for a NIfTI holding the same voxels: the independent reference."""
    native = volume.transpose(2, 1, 0).astype(np.float64) + intercept  # (col, row, slice)
    img = nib.as_closest_canonical(nib.Nifti1Image(native, LPS_TO_RAS @ affine_lps))
    return img.get_fdata(), img.affine


@pytest.mark.parametrize("orientation", [
    (1, 0, 0, 0, 1, 0),                      # axial
    (1, 0, 0, 0, 0, -1),                     # coronal
    (0, 1, 0, 0, 0, -1),                     # sagittal
    oblique_orientation(25.0, 15.0),         # double oblique
])
def test_series_matches_nibabel_canonical(tmp_path, orientation):
    vol = _volume()
    info = write_series(tmp_path / "s", vol, orientation=orientation)
    img = read_image(tmp_path / "s")
    ref_arr, ref_aff = _reference(vol, info["affine_lps"])
    assert img.array.dtype == np.float32
    assert img.array.shape == ref_arr.shape
    np.testing.assert_allclose(img.array, ref_arr, atol=1e-3)
    np.testing.assert_allclose(img.affine, ref_aff, atol=1e-4)
    # spacing from positions (1.5 mm), not SliceThickness (99 in the files)
    assert sorted(np.round(img.spacing, 4)) == sorted([0.6, 0.8, 1.5])
    assert img.tags["n_slices"] == 7
    assert img.modality == "CT" and img.windows == [(40.0, 400.0)]


def test_series_ignores_other_files_and_keeps_tags_clean(tmp_path):
    vol = _volume(n=4)
    write_series(tmp_path / "s", vol, orientation=(1, 0, 0, 0, 1, 0))
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    (tmp_path / "s" / "clip.mp4").write_bytes(np.random.default_rng(1).bytes(200_000))
    img = read_image(tmp_path / "s")
    assert img.tags["skipped_files"] == 2
    text = repr(img.tags)
    for identifier in ("Doe", "PID-12345", "19700101", "20200102", "General Hospital", "ACC999"):
        assert identifier not in text


def test_several_series_need_a_selector(tmp_path):
    a = write_series(tmp_path / "mix", _volume(n=3), orientation=(1, 0, 0, 0, 1, 0), seed=1)
    write_series(tmp_path / "mix", _volume(n=5, seed=2), orientation=(1, 0, 0, 0, 1, 0), seed=2)
    with pytest.raises(SeriesError, match="2 series") as err:
        read_image(tmp_path / "mix")
    assert a["series_uid"] in str(err.value)
    img = read_image(tmp_path / "mix", series_uid=a["series_uid"])
    assert img.array.shape == (10, 12, 3)


def test_duplicate_positions_are_an_error(tmp_path):
    vol = _volume(n=4)
    info = write_series(tmp_path / "s", vol, orientation=(1, 0, 0, 0, 1, 0))
    shutil.copy(info["files"][1], tmp_path / "s" / "copy_of_one.dcm")
    with pytest.raises(SeriesError, match="duplicated slice position"):
        read_image(tmp_path / "s")


def test_missing_slice_is_an_error_or_resampled(tmp_path):
    vol = _volume(n=6)
    info = write_series(tmp_path / "s", vol, orientation=(1, 0, 0, 0, 1, 0), slice_spacing=2.0)
    # the slice at index 3 (z = 55 + 6 mm) goes missing
    z_missing = 55.0 + 3 * 2.0
    victim = next(f for f in info["files"] if abs(float(read_ipp(f)[2]) - z_missing) < 1e-6)
    victim.unlink()
    with pytest.raises(SeriesError, match="non-uniform slice spacing"):
        read_image(tmp_path / "s")
    img = read_image(tmp_path / "s", allow_nonuniform=True)
    assert img.tags["resampled"] is True
    assert img.array.shape[2] == 6 and img.spacing[2] == pytest.approx(2.0)
    # the missing slice is the mean of its neighbours (linear interpolation), in HU
    expected = (vol[2].T.astype(float) + vol[4].T) / 2 - 1024.0
    # axial LPS -> RAS flips x and y
    np.testing.assert_allclose(img.array[::-1, ::-1, 3], expected, atol=1e-3)


def read_ipp(path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient


def test_mixed_orientations_are_an_error(tmp_path):
    folder = tmp_path / "s"
    info = write_series(folder, _volume(n=3), orientation=(1, 0, 0, 0, 1, 0))
    import pydicom

    ds = pydicom.dcmread(info["files"][0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    save(ds, folder / "other.dcm")
    with pytest.raises(SeriesError, match="mixed orientations") as err:
        read_image(folder)
    assert str(folder) in str(err.value)


def test_missing_position_is_an_error(tmp_path):
    folder = tmp_path / "s"
    info = write_series(folder, _volume(n=3), orientation=(1, 0, 0, 0, 1, 0))
    ds = make_dataset(np.zeros((12, 10), np.int16), position=None, series_uid=info["series_uid"])
    save(ds, folder / "nopos.dcm")
    with pytest.raises(SeriesError, match="nopos.dcm has no valid ImagePositionPatient"):
        read_image(folder)


def test_per_slice_rescale(tmp_path):
    """PET/MR series may rescale each slice differently; each slice uses its own."""
    vol = _volume(n=3)
    folder = tmp_path / "s"
    info = write_series(folder, vol, orientation=(1, 0, 0, 0, 1, 0))
    import pydicom

    for f in info["files"]:
        ds = pydicom.dcmread(f)
        k = round((float(ds.ImagePositionPatient[2]) - 55.0) / 1.5)
        ds.RescaleSlope, ds.RescaleIntercept = 0.5 * (k + 1), 10.0 * k
        ds.save_as(f)
    img = read_image(folder)
    for k in range(3):
        np.testing.assert_allclose(img.array[::-1, ::-1, k], vol[k].T * 0.5 * (k + 1) + 10.0 * k, atol=1e-3)


def test_damaged_slice_is_named(tmp_path):
    folder = tmp_path / "s"
    info = write_series(folder, _volume(n=4), orientation=(1, 0, 0, 0, 1, 0))
    victim = info["files"][2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])  # pixel data cut short
    with pytest.raises(ImageReadError, match="truncated or corrupt") as err:
        read_image(folder)
    assert victim.name in str(err.value)
    victim.write_bytes(data[:300])  # header cut short
    with pytest.raises(SeriesError, match=f"damaged DICOM file {victim.name}"):
        read_image(folder)


def test_list_series_describes_without_identifiers(tmp_path):
    from medvl.io import list_series

    a = write_series(tmp_path / "mix", _volume(n=3), orientation=(1, 0, 0, 0, 1, 0), seed=1)
    b = write_series(tmp_path / "mix", _volume(n=5, seed=2), orientation=(1, 0, 0, 0, 0, -1), seed=2)
    c = write_series(tmp_path / "mix", _volume(n=2, seed=3), orientation=oblique_orientation(30, 30), seed=3)
    infos = {i.series_uid: i for i in list_series(tmp_path / "mix")}
    assert infos[a["series_uid"]].n_files == 3 and infos[a["series_uid"]].orientation == "axial"
    assert infos[b["series_uid"]].orientation == "coronal" and infos[b["series_uid"]].n_files == 5
    assert infos[c["series_uid"]].orientation == "oblique"
    assert infos[a["series_uid"]].modality == "CT" and infos[a["series_uid"]].rows == 12
    assert "Doe" not in repr(infos) and "PID" not in repr(infos)
    with pytest.raises(SeriesError, match="coronal"):
        read_image(tmp_path / "mix")


def test_large_folder_path_defers_pixels_and_agrees(tmp_path, monkeypatch):
    """Folders above READ_WHOLE_BYTES are read with deferred pixel data: same volume."""
    from medvl.io import series

    vol = _volume(n=5)
    info = write_series(tmp_path / "s", vol, orientation=oblique_orientation(10, 5))
    whole = read_image(tmp_path / "s")
    monkeypatch.setattr(series, "READ_WHOLE_BYTES", 0)
    deferred = read_image(tmp_path / "s")
    np.testing.assert_array_equal(deferred.array, whole.array)
    np.testing.assert_allclose(deferred.affine, _reference(vol, info["affine_lps"])[1], atol=1e-4)


def test_gantry_tilt_keeps_a_sheared_affine(tmp_path):
    """Tilted CT: slice origins move along the column direction too; the affine keeps the shear."""
    vol = _volume(n=6)
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    normal = np.cross(iop[:3], iop[3:])
    step = 2.0 * normal + 0.35 * iop[3:]  # ~10 degree tilt
    positions = np.array([-30.0, 20.0, 55.0]) + np.outer(np.arange(6), step)
    info = write_series(tmp_path / "s", vol, orientation=iop, positions=positions)
    img = read_image(tmp_path / "s")
    affine_lps = info["affine_lps"].copy()
    affine_lps[:3, 2] = step  # the true slice step, not the normal
    ref_arr, ref_aff = _reference(vol, affine_lps)
    np.testing.assert_allclose(img.array, ref_arr, atol=1e-3)
    np.testing.assert_allclose(img.affine, ref_aff, atol=1e-4)
    # physical slice spacing along the normal is still 2 mm; the voxel column is longer
    assert img.spacing[2] == pytest.approx(np.linalg.norm(step))

"""Single DICOM files: physical units, radiograph polarity, multi-frame geometry, bad input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from io_factory import make_dataset, oblique_orientation, save, write_series

from medvl.errors import ImageReadError, MissingDecoderError
from medvl.io import apply_window, read_image, to_display


def test_ct_slice_in_hounsfield_units(testdata):
    path = testdata("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    ref = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    assert img.array.shape == (ds.Rows, ds.Columns) and img.array.dtype == np.float32
    np.testing.assert_allclose(img.array, ref, rtol=1e-6)
    assert img.affine is None and img.modality == "CT"
    assert img.spacing == tuple(float(v) for v in ds.PixelSpacing)
    # not a max-scaled picture: air is about -1000 HU somewhere in a CT slice
    assert img.array.min() < -500


def test_chest_radiograph_polarity(testdata):
    """RG1 is a real PA chest CR stored MONOCHROME1: after display steps lungs are dark."""
    img = read_image(testdata("RG1_UNCR.dcm"))
    assert img.photometric_interpretation == "MONOCHROME1"
    assert img.array.shape == (1955, 1841)
    shown = to_display(img)
    lungs = np.concatenate([shown[400:600, 350:550].ravel(), shown[400:600, 1300:1500].ravel()])
    spine = shown[300:700, 880:960]
    assert lungs.mean() < spine.mean() - 0.1
    # forgetting the inversion gets it backwards (the check can fail)
    raw = apply_window(img.array, *img.windows[0])
    assert raw[400:600, 350:550].mean() > raw[300:700, 880:960].mean()
    for key in ("PatientName", "PatientID", "StudyDate", "InstitutionName"):
        assert key not in img.tags


def test_enhanced_multiframe_uses_per_frame_geometry(tmp_path):
    """An enhanced multi-frame object, frames shuffled, gives the same volume as the series."""
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 2000, size=(5, 8, 6)).astype(np.int16)
    iop = oblique_orientation(30.0, 20.0)
    info = write_series(tmp_path / "series", vol, orientation=iop, slice_spacing=2.5)
    series_img = read_image(tmp_path / "series")

    files = [pydicom.dcmread(f) for f in info["files"]]
    order = rng.permutation(len(files))
    ds = make_dataset(np.zeros((8, 6), np.int16), orientation=None, position=None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    for kw in ("RescaleSlope", "RescaleIntercept", "PixelSpacing"):
        del ds[kw]
    ds.NumberOfFrames = len(files)
    ds.PixelData = b"".join(files[i].PixelData for i in order)
    shared = pydicom.Dataset()
    shared.PlaneOrientationSequence = [pydicom.Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = [pydicom.Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.8, 0.6]
    shared.PixelValueTransformationSequence = [pydicom.Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1.0
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024.0
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in order:
        item = pydicom.Dataset()
        item.PlanePositionSequence = [pydicom.Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = files[i].ImagePositionPatient
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = save(ds, tmp_path / "enhanced.dcm")

    img = read_image(path)
    np.testing.assert_allclose(img.array, series_img.array, atol=1e-4)
    np.testing.assert_allclose(img.affine, series_img.affine, atol=1e-5)
    assert img.tags["geometry"] == "per-frame functional groups"
    one = read_image(path, frame=0)
    assert one.array.shape == (8, 6)
    np.testing.assert_allclose(one.array, files[order[0]].pixel_array - 1024.0)


def test_multiframe_without_geometry_warns(testdata):
    with pytest.warns(UserWarning, match="no per-frame geometry"):
        img = read_image(testdata("emri_small.dcm"))
    assert img.array.shape == (64, 64, 10)
    assert img.tags["geometry"].startswith("assumed")


# ---------------------------------------------------------------- bad input


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("hello, I am not an image\n" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_truncated_file(tmp_path, testdata):
    data = testdata("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated|corrupt") as err:
        read_image(path)
    assert "cut.dcm" in str(err.value)


def test_missing_pixel_data(tmp_path, testdata):
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(testdata("rtplan.dcm"))
    ds = make_dataset(np.zeros((4, 4), np.int16))
    del ds.PixelData
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(save(ds, tmp_path / "nopix.dcm"))


def test_missing_bits_allocated(tmp_path):
    ds = make_dataset(np.zeros((4, 4), np.int16))
    del ds.BitsAllocated
    with pytest.raises(ImageReadError) as err:
        read_image(save(ds, tmp_path / "nobits.dcm"))
    assert err.value.field == "BitsAllocated" and "nobits.dcm" in str(err.value)


def test_image_larger_than_limit(tmp_path):
    path = save(make_dataset(np.zeros((64, 64), np.int16)), tmp_path / "big.dcm")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path, max_voxels=1000)
    assert read_image(path, max_voxels=4096).array.shape == (64, 64)


def test_missing_decoder_names_the_package(tmp_path, testdata, monkeypatch):
    """With the JPEG 2000 plugins gone, the error says what to pip install."""
    decoder = pydicom.pixels.get_decoder(pydicom.uid.JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no plugin were installed
    assert not decoder.is_available
    with pytest.raises(MissingDecoderError, match="pylibjpeg-openjpeg") as err:
        read_image(testdata("MR_small_jp2klossless.dcm"))
    assert "MR_small_jp2klossless.dcm" in str(err.value)


def test_read_options_from_config(tmp_path):
    """The data config's ``io`` section validates into ReadOptions and feeds read_image."""
    from medvl.config import from_dict
    from medvl.errors import ConfigError
    from medvl.io import ReadOptions

    opts = from_dict(ReadOptions, {"max_voxels": 100, "nonfinite": "keep"}, where="data.io")
    path = save(make_dataset(np.zeros((64, 64), np.int16)), tmp_path / "big.dcm")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path, **opts.as_kwargs())
    with pytest.raises(ConfigError, match="data.io.nonfinite"):
        from_dict(ReadOptions, {"nonfinite": "drop"}, where="data.io")


def test_radiograph_spacing_sources(tmp_path):
    ds = make_dataset(np.zeros((4, 4), np.uint16), modality="DX", orientation=None, position=None)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.2]
    assert read_image(save(ds, tmp_path / "a.dcm")).spacing == (0.2, 0.2)
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    img = read_image(save(ds, tmp_path / "b.dcm"))
    assert img.spacing == pytest.approx((0.16, 0.16))
    assert img.tags["spacing_source"].startswith("ImagerPixelSpacing/")
    ds.PixelSpacing = [0.15, 0.14]  # calibrated spacing wins
    assert read_image(save(ds, tmp_path / "c.dcm")).spacing == (0.15, 0.14)


def test_float_pixel_data(tmp_path):
    """Parametric maps store FloatPixelData: values are already physical, read as is."""
    ds = make_dataset(np.zeros((4, 5), np.int16))
    for kw in ("PixelData", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, kw)
    ds.BitsAllocated = 32
    values = np.linspace(-1.5, 2.5, 20, dtype=np.float32).reshape(4, 5)
    ds.FloatPixelData = values.tobytes()
    img = read_image(save(ds, tmp_path / "float.dcm"))
    np.testing.assert_array_equal(img.array, values)

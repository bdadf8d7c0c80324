"""Absurd header values are errors naming the tag, not silently wrong pixels or geometry.

Before, RescaleSlope NaN gave an all-NaN image, 1e400 (inf) an infinite one, an
infinite PixelSpacing an infinite voxel size, and NumberOfFrames 0 counted as one
frame (so a colour multi-frame cine was read as one garbled 2D frame).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_factory import write_series
from pydicom.dataelem import DataElement

from medvl.errors import ImageReadError, MedvlError
from medvl.io import read_image


def _with(src: Path, dst: Path, **values: str) -> Path:
    """Copy of ``src`` with raw string values written into the named tags (as a broken writer
    would); an empty value deletes the tag."""
    ds = pydicom.dcmread(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it is asked to write
        for kw, raw in values.items():
            tag = pydicom.datadict.tag_for_keyword(kw)
            if raw == "":
                del ds[tag]
                continue
            vr = pydicom.datadict.dictionary_VR(tag)
            ds[tag] = DataElement(tag, vr, raw.split("\\") if "\\" in raw else raw)
        ds.save_as(dst)
    return dst


@pytest.mark.parametrize(("keyword", "raw"), [
    ("RescaleSlope", "nan"), ("RescaleSlope", "inf"), ("RescaleSlope", "1e400"), ("RescaleSlope", "0"),
    ("RescaleIntercept", "-inf"), ("RescaleIntercept", "1e400"),
    ("RescaleIntercept", "1e30"), ("PixelSpacing", "inf\\0.5"), ("PixelSpacing", "0.5\\nan"),
    ("PixelSpacing", "1e9\\1e9"),
])
def test_absurd_value_is_an_error_naming_the_tag(tmp_path: Path, testdata, keyword: str, raw: str) -> None:
    f = _with(testdata("CT_small.dcm"), tmp_path / "ct.dcm", **{keyword: raw})
    with pytest.raises(ImageReadError) as info:
        read_image(f)
    assert info.value.field == keyword and keyword in str(info.value)


def test_sane_values_still_read(tmp_path: Path, testdata) -> None:
    f = _with(testdata("CT_small.dcm"), tmp_path / "ct.dcm", RescaleSlope="0.5", RescaleIntercept="-1024",
              PixelSpacing="0.7\\0.7")
    ref = pydicom.dcmread(f)
    img = read_image(f)
    expected = pydicom.pixels.apply_modality_lut(ref.pixel_array, ref)  # pydicom's own LUT as reference
    np.testing.assert_allclose(img.array, expected, rtol=1e-6)
    assert img.spacing == (0.7, 0.7)


def test_number_of_frames_zero_is_an_error(tmp_path: Path, testdata) -> None:
    f = _with(testdata("SC_rgb_rle_2frame.dcm"), tmp_path / "cine.dcm", NumberOfFrames="0")
    with pytest.raises(ImageReadError) as info:
        read_image(f)
    assert info.value.field == "NumberOfFrames"


@pytest.mark.parametrize("keyword", ["SpacingBetweenSlices", "SliceThickness"])
def test_infinite_frame_gap_of_a_frame_stack_is_an_error(tmp_path: Path, testdata, keyword: str) -> None:
    """emri_small has no per-frame geometry: the frame gap comes from SpacingBetweenSlices
    (1.2 in the file) or, without it, SliceThickness."""
    src = testdata("emri_small.dcm")
    assert "PerFrameFunctionalGroupsSequence" not in pydicom.dcmread(src)
    values = {keyword: "inf"} if keyword == "SpacingBetweenSlices" else {"SpacingBetweenSlices": "", keyword: "inf"}
    f = _with(src, tmp_path / "mr.dcm", **values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader warns that the frames have no geometry
        with pytest.raises(ImageReadError) as info:
            read_image(f)
    assert info.value.field == keyword


def test_a_series_slice_with_a_nan_slope_is_named(tmp_path: Path) -> None:
    vol = np.random.default_rng(0).integers(0, 1000, size=(4, 6, 5)).astype(np.int16)
    info = write_series(tmp_path / "s", vol, orientation=(1, 0, 0, 0, 1, 0))
    bad = Path(info["files"][2])
    _with(bad, bad, RescaleSlope="nan")
    with pytest.raises(MedvlError) as err:
        read_image(tmp_path / "s")
    assert bad.name in str(err.value) and err.value.field == "RescaleSlope"

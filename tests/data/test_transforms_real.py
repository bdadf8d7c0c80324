"""Conformance on real DICOM files shipped with pydicom / pydicom-data.

The full data path (``medvl.io.read_image`` -> ``ModelInputTransform``) at native
size must equal pydicom's own modality and VOI LUT functions, with MONOCHROME1
inverted after windowing.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medvl.config import from_dict
from medvl.data.config import DataConfig
from medvl.data.transforms import ModelInputTransform
from medvl.io import get_preset, read_image


def _file(name: str):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return path


def _pydicom_display(ds, physical: np.ndarray) -> np.ndarray:
    """pydicom's VOI output scaled to [0, 1] by its own output range (probed at the extremes)."""
    out = apply_voi_lut(physical.astype(np.float64), ds)
    lo = apply_voi_lut(np.array([-1e9]), ds)[0]
    hi = apply_voi_lut(np.array([1e9]), ds)[0]
    return (out - lo) / (hi - lo)


def _transform(ds, **kw) -> ModelInputTransform:
    return ModelInputTransform(from_dict(DataConfig, {"dims": 2, "image_size": [int(ds.Rows), int(ds.Columns)], **kw}))


def test_ct_slice_raw_hu_and_preset_match_pydicom() -> None:
    path = _file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    got = _transform(ds, window="none", hu_range=[-1000, 1000])(read_image(path))
    np.testing.assert_allclose(got[0], np.clip((hu + 1000) / 2000, 0, 1), atol=1e-5)
    c, w = get_preset("lung")
    ds.WindowCenter, ds.WindowWidth = c, w
    got = _transform(ds, window="lung")(read_image(path))
    np.testing.assert_allclose(got[0], _pydicom_display(ds, hu), atol=1e-4)


def test_mr_file_window_matches_pydicom() -> None:
    path = _file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    phys = apply_modality_lut(ds.pixel_array, ds)
    got = _transform(ds)(read_image(path))
    np.testing.assert_allclose(got[0], _pydicom_display(ds, phys), atol=1e-4)


def test_real_monochrome1_chest_radiograph() -> None:
    path = _file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    phys = apply_modality_lut(ds.pixel_array, ds)
    expected = 1.0 - _pydicom_display(ds, phys)  # inverted after the file's window
    got = _transform(ds)(read_image(path))
    np.testing.assert_allclose(got[0], expected, atol=1e-4)
    # at model size the aspect ratio is kept: 1955 x 1841 -> 224 x 211, padded on the sides
    small = ModelInputTransform(from_dict(DataConfig, {"dims": 2, "image_size": 224}))(read_image(path))
    assert small.shape == (1, 224, 224)
    assert np.all(small[0, :, :6] == 0) and np.all(small[0, :, -6:] == 0)
    assert small[0, :, 7:-7].std() > 0.05

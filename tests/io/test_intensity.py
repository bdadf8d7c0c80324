"""Display and model steps against pydicom's own windowing and hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from io_factory import make_dataset

from medvl.errors import ConfigError
from medvl.io import (
    apply_window,
    get_preset,
    invert_monochrome1,
    normalize,
    read_image,
    to_display,
    window_image,
    window_presets,
)
from medvl.io.intensity import apply_voi_lut_table


def _pydicom_window(values, center, width, function, bits=16, signed=True, slope=1.0, intercept=0.0):
    """pydicom's apply_windowing on float input, rescaled back to [0, 1] by its output range."""
    ds = make_dataset(np.zeros((2, 2), np.int16), slope=slope, intercept=intercept, window=(center, width))
    ds.VOILUTFunction = function
    ds.BitsStored = bits
    ds.PixelRepresentation = int(signed)
    y_min = -(2 ** (bits - 1)) if signed else 0
    y_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    with np.errstate(over="ignore"):
        out = pydicom.pixels.apply_windowing(values.astype(np.float64), ds)
    return (out - y_min) / (y_max - y_min)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center,width", [(40.0, 400.0), (-600.0, 1500.0), (0.0, 1.0), (100.5, 2.0)])
def test_window_matches_pydicom(function, center, width):
    values = np.linspace(-2000, 3000, 5001)
    values = np.concatenate([values, [center - width / 2, center + width / 2, center - 0.5, center]])
    ours = apply_window(values, center, width, function)
    ref = _pydicom_window(values, center, width, function, intercept=-1024.0)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_window_hand_worked():
    # LINEAR, c=40, w=400 (PS3.3 C.11.2.1.2.1): c' = 39.5, w' = 399;
    # x <= c' - w'/2 = -160 -> 0, x > c' + w'/2 = 239 -> 1, else (x - c')/w' + 0.5
    out = apply_window(np.array([-1000.0, -160.0, -159.5, 40.0, 239.0, 240.0]), 40.0, 400.0)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5 / 399, 0.5 + 0.5 / 399, 1.0, 1.0], atol=1e-6)


def test_window_rejects_bad_width():
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(3), 0.0, 0.5)


def test_presets_are_data_and_named():
    presets = window_presets()
    for name in ("lung", "mediastinum", "bone", "brain", "soft_tissue", "abdomen"):
        assert name in presets
    assert get_preset("lung") == (-600.0, 1500.0)
    assert get_preset("Soft tissue") == presets["soft_tissue"]
    with pytest.raises(ConfigError, match="lung"):
        get_preset("lungz")


def test_monochrome1_inverted_after_windowing(tmp_path):
    # MONOCHROME1: stored 0 is white. Window c=500,w=1000 maps 0 -> 0 then inverts -> 1 (bright).
    pixels = np.array([[0, 250], [500, 1000]], dtype=np.uint16)
    ds = make_dataset(pixels, modality="CR", photometric="MONOCHROME1", intercept=0.0,
                      window=(500.0, 1000.0), orientation=None, position=None)
    path = tmp_path / "m1.dcm"
    ds.save_as(path, enforce_file_format=True)
    img = read_image(path)
    shown = to_display(img)
    windowed = apply_window(img.array, 500.0, 1000.0)
    np.testing.assert_allclose(shown, 1.0 - windowed, atol=1e-6)
    assert shown[0, 0] == pytest.approx(1.0) and shown[1, 1] == pytest.approx(0.0)
    # inverting raw values first and windowing after would not give the same picture
    assert not np.allclose(shown, apply_window(img.array.max() - img.array, 500.0, 1000.0))


def test_invert_is_one_minus():
    np.testing.assert_allclose(invert_monochrome1(np.array([0.0, 0.25, 1.0])), [1.0, 0.75, 0.0])


def test_voi_lut_table_matches_pydicom(testdata):
    path = testdata("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert img.voi_luts, "the file's VOI LUT must be kept"
    ref = pydicom.pixels.apply_voi_lut(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), ds)
    bits = img.voi_luts[0].bits
    np.testing.assert_allclose(window_image(img) * (2**bits - 1), ref, atol=1e-3)
    direct = apply_voi_lut_table(img.array, img.voi_luts[0])
    np.testing.assert_array_equal(direct, window_image(img, "file"))


def test_window_image_choices(testdata):
    img = read_image(testdata("CT_small.dcm"))
    lung = window_image(img, "lung")
    np.testing.assert_allclose(lung, apply_window(img.array, -600.0, 1500.0))
    explicit = window_image(img, (40, 400))
    np.testing.assert_allclose(explicit, apply_window(img.array, 40, 400))
    full = window_image(img, "full")
    assert full.min() == pytest.approx(0.0) and full.max() == pytest.approx(1.0)


def test_normalize_hand_worked():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(normalize(x, "zscore"), (x - 2.5) / np.std(x), rtol=1e-6)
    np.testing.assert_allclose(normalize(x, "minmax"), [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    y = np.arange(101, dtype=float)
    out = normalize(y, "percentile", lower=10, upper=90)
    assert out[10] == pytest.approx(0.0) and out[90] == pytest.approx(1.0)
    assert out[0] == 0.0 and out[100] == 1.0  # clipped
    const = normalize(np.full(5, 7.0), "zscore")
    assert np.all(np.isfinite(const))


def test_palette_colour_display_uses_lut_range(testdata):
    """OBXXXX1A stores 8-bit indices into 16-bit palette LUTs: displayed / 65535, not / 255."""
    img = read_image(testdata("OBXXXX1A.dcm"))
    shown = to_display(img)
    np.testing.assert_allclose(shown, img.array / 65535.0, rtol=1e-6)
    assert (shown >= 1.0).mean() < 0.01  # not saturated
    rgb = read_image(testdata("US1_UNCR.dcm"))
    np.testing.assert_allclose(to_display(rgb), rgb.array / 255.0, rtol=1e-6)


def test_file_windows_by_index_and_explanation(tmp_path):
    ds = make_dataset(np.array([[-1000, 0], [40, 400]], np.int16), intercept=0.0, window=None)
    ds.WindowCenter, ds.WindowWidth = [-600, 40], [1500, 400]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    path = tmp_path / "w.dcm"
    ds.save_as(path, enforce_file_format=True)
    img = read_image(path)
    assert img.windows == [(-600.0, 1500.0), (40.0, 400.0)]
    np.testing.assert_allclose(window_image(img, "file:mediastinum"), apply_window(img.array, 40, 400))
    np.testing.assert_allclose(window_image(img, "file:0"), apply_window(img.array, -600, 1500))
    with pytest.raises(ConfigError, match="0=LUNG, 1=MEDIASTINUM"):
        window_image(img, "file:bone")


def test_invalid_stored_window_falls_back_with_a_warning(tmp_path):
    ds = make_dataset(np.array([[0, 10], [20, 30]], np.int16), intercept=0.0, window=(5.0, 0.5))
    path = tmp_path / "w.dcm"
    ds.save_as(path, enforce_file_format=True)
    img = read_image(path)
    with pytest.warns(UserWarning, match="width 0.5"):
        shown = window_image(img)
    np.testing.assert_allclose(shown, [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)

"""NIfTI against nibabel's as_closest_canonical on its own bundled files; PNG/JPEG via Pillow."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medvl.errors import ImageReadError
from medvl.io import read_image

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
NIFTI_FILES = sorted(p.name for p in NIB_DATA.iterdir() if p.name.endswith((".nii", ".nii.gz")))


@pytest.mark.parametrize("name", NIFTI_FILES)
def test_bundled_nifti_equals_closest_canonical(name):
    path = NIB_DATA / name
    loaded = nib.load(path)
    if not isinstance(loaded, (nib.Nifti1Image, nib.Nifti2Image)):  # e.g. CIFTI-2 matrices
        with pytest.raises(ImageReadError, match="not a NIfTI image"):
            read_image(path)
        return
    ref = nib.as_closest_canonical(loaded)
    shape = ref.shape
    if len(shape) == 4 and shape[3] > 1:
        with pytest.raises(ImageReadError, match="frame="):
            read_image(path)
        frames = [0, shape[3] - 1]
    else:
        frames = [None]
    for frame in frames:
        img = read_image(path, frame=frame)
        data = ref.get_fdata()
        expected = data if frame is None else data[..., frame]
        if expected.ndim == 4:
            expected = expected[..., 0]
        assert img.array.dtype == np.float32
        # NaN outside the field of view (resampled maps) becomes 0 by default, or is kept
        np.testing.assert_allclose(img.array, np.nan_to_num(expected, nan=0.0), rtol=1e-5, atol=1e-4)
        if np.isnan(expected).any():
            kept = read_image(path, frame=frame, nonfinite="keep")
            np.testing.assert_allclose(kept.array, expected, rtol=1e-5, atol=1e-4)
            assert kept.tags["nonfinite_voxels"] == int(np.isnan(expected).sum())
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        np.testing.assert_allclose(img.spacing, ref.header.get_zooms()[:3], rtol=1e-5)


def test_nifti2_is_read():
    img = read_image(NIB_DATA / "example_nifti2.nii.gz", frame=1)
    assert img.tags["format"] == "NIfTI-2"


def test_nan_filled_nifti(tmp_path):
    data = np.full((4, 5, 6), np.nan, dtype=np.float32)
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    for policy in ("zero", "keep", "error"):
        with pytest.raises(ImageReadError, match="all voxels are NaN") as err:
            read_image(path, nonfinite=policy)
        assert "nan.nii.gz" in str(err.value)
    data[1, 2, 3] = 5.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    img = read_image(path)
    assert img.tags["nonfinite_voxels"] == data.size - 1 and img.array.sum() == 5.0
    with pytest.raises(ImageReadError, match="119 of 120 voxels"):
        read_image(path, nonfinite="error")


def test_zero_sized_nifti(tmp_path):
    path = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros((0, 4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(ImageReadError, match="zero-sized"):
        read_image(path)


def test_truncated_nifti(tmp_path):
    src = NIB_DATA / "anatomical.nii"
    path = tmp_path / "cut.nii"
    path.write_bytes(src.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="cut.nii"):
        read_image(path)


def test_nifti_over_limit(tmp_path):
    with pytest.raises(ImageReadError, match="too large"):
        read_image(NIB_DATA / "anatomical.nii", max_voxels=100)


@pytest.mark.parametrize("suffix,mode,dtype", [(".png", "L", np.uint8), (".png", "I;16", np.uint16),
                                               (".jpg", "L", np.uint8)])
def test_grayscale_pictures(tmp_path, suffix, mode, dtype):
    rng = np.random.default_rng(0)
    high = 255 if dtype == np.uint8 else 65535
    pixels = rng.integers(0, high, size=(30, 40)).astype(dtype)
    if suffix == ".jpg":
        pixels = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))  # smooth: JPEG-friendly
    path = tmp_path / f"cxr{suffix}"
    Image.fromarray(pixels, mode=None if mode == "L" else mode).save(path, quality=100) if suffix == ".jpg" \
        else Image.fromarray(pixels).save(path)
    img = read_image(path)
    assert img.array.shape == (30, 40) and img.array.dtype == np.float32
    assert img.photometric_interpretation == "MONOCHROME2" and img.affine is None
    tol = 3 if suffix == ".jpg" else 0
    np.testing.assert_allclose(img.array, pixels.astype(np.float32), atol=tol)
    assert img.tags["spacing_source"] == "assumed"


def test_colour_picture_is_rgb(tmp_path):
    pixels = np.zeros((10, 12, 3), np.uint8)
    pixels[..., 0] = 200
    path = tmp_path / "c.png"
    Image.fromarray(pixels).save(path)
    img = read_image(path)
    assert img.array.shape == (10, 12, 3) and img.photometric_interpretation == "RGB"


def test_broken_picture(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(path)


def test_missing_path(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nothing.dcm")


def test_five_dimensional_nifti_with_singleton_tail(tmp_path):
    data = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2, 1)
    path = tmp_path / "v5.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    img = read_image(path, frame=1)
    assert img.array.shape == (2, 3, 4)
    np.testing.assert_array_equal(img.array, data[..., 1, 0])


def test_grey_picture_saved_as_palette_or_rgb_is_grayscale(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    for name in ("p.png", "rgb.png"):
        img = read_image(tmp_path / name)
        assert img.array.shape == grey.shape and img.photometric_interpretation == "MONOCHROME2"
        np.testing.assert_array_equal(img.array, grey)

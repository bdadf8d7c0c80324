"""Damaged real files: every outcome is an image or a medvl error naming the file.

Truncations at many offsets and seeded random byte changes in the header and pixel
data of real files in several transfer syntaxes. Whatever breaks deep inside pydicom,
a decoder plugin (including a Rust panic) or numpy must come out as an
``ImageReadError`` that names the file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medvl.errors import ImageReadError
from medvl.io import read_image

FILES = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small_RLE.dcm",
         "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm", "vlut_04.dcm", "MR_small_jpeg_ls_lossless.dcm",
         "eCT_Supplemental.dcm"]


def _variants(data: bytes, rng: np.random.Generator, n_cut: int = 8, n_flip: int = 20):
    for k in np.linspace(0, len(data) - 1, n_cut).astype(int):
        yield f"cut{k}", data[:k]
    for j in range(n_flip):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 20))):
            # mostly in the header, where a single byte changes a length, VR or value
            hi = min(len(b), 4000) if rng.random() < 0.6 else len(b)
            b[int(rng.integers(0, hi))] = int(rng.integers(0, 256))
        yield f"flip{j}", bytes(b)


@pytest.mark.parametrize("name", FILES)
def test_damaged_files_fail_cleanly(tmp_path, testdata, name):
    data = testdata(name).read_bytes()
    rng = np.random.default_rng(sum(map(ord, name)))
    outcomes = {"read": 0, "refused": 0}
    for label, blob in _variants(data, rng):
        path = tmp_path / f"{label}_{name}"
        path.write_bytes(blob)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = read_image(path)
        except ImageReadError as exc:
            assert path.name in str(exc), f"error does not name the file: {exc}"
            outcomes["refused"] += 1
            continue
        assert img.array.dtype == np.float32 and img.array.size > 0
        outcomes["read"] += 1
    assert outcomes["refused"] >= 8  # the truncations at least are refused


def test_rust_panic_becomes_a_medvl_error(tmp_path, testdata, monkeypatch):
    """pyo3 panics (pylibjpeg-rle) derive from BaseException, not Exception."""
    import pydicom

    class PanicException(BaseException):  # what pyo3 raises, reproduced by name and base
        pass

    def panic(self, *args, **kwargs):
        raise PanicException("index out of bounds: the len is 8192 but the index is 8192")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    with pytest.raises(ImageReadError, match="index out of bounds") as err:
        read_image(testdata("MR_small_RLE.dcm"))
    assert "MR_small_RLE.dcm" in str(err.value)


@pytest.mark.parametrize("name", ["anatomical.nii", "example_nifti2.nii.gz"])
def test_damaged_nifti_fail_cleanly(tmp_path, name):
    from pathlib import Path

    import nibabel as nib

    data = (Path(nib.__file__).parent / "tests" / "data" / name).read_bytes()
    rng = np.random.default_rng(len(name))
    refused = 0
    for label, blob in _variants(data, rng, n_cut=6, n_flip=12):
        path = tmp_path / f"{label}_{name}"
        path.write_bytes(blob)
        try:
            read_image(path, frame=0)
        except ImageReadError as exc:
            assert path.name in str(exc)
            refused += 1
    assert refused >= 5

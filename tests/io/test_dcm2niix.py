"""The series reader against an independent tool: dcm2niix (Debian package)."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from io_factory import oblique_orientation, write_series

from medvl.io import read_image

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(
    DCM2NIIX is None, reason="dcm2niix not installed (Debian: apt-get install dcm2niix)"
)


@pytest.mark.parametrize("orientation", [oblique_orientation(25.0, 15.0), (0, 1, 0, 0, 0, -1)],
                         ids=["double-oblique", "sagittal"])
def test_series_agrees_with_dcm2niix(tmp_path, orientation):
    rng = np.random.default_rng(7)
    vol = rng.integers(-1000, 2500, size=(9, 14, 11)).astype(np.int16)
    # shuffled file names and InstanceNumbers (see factory.write_series)
    write_series(tmp_path / "dicom", vol, orientation=orientation, slice_spacing=1.7,
                 pixel_spacing=(0.9, 0.7), intercept=-1024.0)
    out = tmp_path / "nifti"
    out.mkdir()
    run = subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-f", "vol", "-o", str(out), str(tmp_path / "dicom")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    (nii,) = sorted(out.glob("*.nii"))
    ref = nib.as_closest_canonical(nib.load(nii))
    img = read_image(tmp_path / "dicom")
    assert img.array.shape == ref.shape
    np.testing.assert_allclose(img.array, ref.get_fdata(), atol=1e-3)  # HU, via scl_slope/inter
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)
    assert img.array.min() < -900  # physical units, not stored values


def test_real_enhanced_ct_agrees_with_dcm2niix(tmp_path, testdata):
    """eCT_Supplemental (pydicom-data): per-frame positions, shared orientation, and the
    rescale held in the functional groups, against dcm2niix's own reading."""
    src = testdata("eCT_Supplemental.dcm")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "nifti"
    out.mkdir()
    run = subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-f", "e", "-o", str(out), str(folder)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    ref = nib.as_closest_canonical(nib.load(out / "e.nii"))
    img = read_image(src)
    assert img.tags["geometry"] == "per-frame functional groups"
    np.testing.assert_allclose(img.array, ref.get_fdata(), atol=1e-3)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)

"""Real multi-file series shipped with pydicom (dicomdirtests): read, or refused for the right reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medvl.errors import SeriesError
from medvl.io import list_series, read_image

ROOT = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"


def test_axial_ct_series_agrees_with_dcm2niix(tmp_path):
    folder = ROOT / "98892001" / "CT5N"
    img = read_image(folder)
    assert img.array.shape == (16, 16, 5) and img.modality == "CT"
    assert img.spacing[2] == pytest.approx(2.5)
    tool = shutil.which("dcm2niix")
    if tool is None:
        pytest.skip("dcm2niix not installed (Debian: apt-get install dcm2niix)")
    run = subprocess.run([tool, "-z", "n", "-b", "n", "-f", "v", "-o", str(tmp_path), str(folder)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    ref = nib.as_closest_canonical(nib.load(tmp_path / "v.nii"))
    np.testing.assert_allclose(img.array, ref.get_fdata(), atol=1e-3)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)


def test_real_series_with_a_gap():
    folder = ROOT / "77654033" / "CT2"
    with pytest.raises(SeriesError, match="non-uniform slice spacing"):
        read_image(folder)
    img = read_image(folder, allow_nonuniform=True)
    assert img.tags["resampled"] is True and img.array.ndim == 3


@pytest.mark.parametrize("folder", ["98892003/MR700", "98892001/CT2N"])
def test_real_localizer_series_are_refused(folder):
    """Scouts mix orientations within one SeriesInstanceUID: not a volume."""
    with pytest.raises(SeriesError, match="mixed orientations"):
        read_image(ROOT / folder)


def test_folder_with_three_real_series():
    folder = ROOT / "98892003" / "MR2"
    infos = list_series(folder)
    assert len(infos) == 3 and sum(i.n_files for i in infos) == 7
    with pytest.raises(SeriesError, match="3 series"):
        read_image(folder)
    single = next(i for i in infos if i.n_files == 1)
    assert read_image(folder, series_uid=single.series_uid).array.ndim == 2

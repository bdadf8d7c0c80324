"""A series with an unreadable slice is an error naming it, or (allow_gaps) says what is missing.

Before, an empty or header-truncated slice was skipped like a note next to the
slices and the volume came back one slice short; ``tags["skipped_files"]`` was the
only hint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_factory import write_series

from medvl.errors import SeriesError
from medvl.io import read_image

N = 8
STEP = 1.5


def _series(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Eight axial slices, 1.5 mm apart; returns the files in stack order (by z) and the volume."""
    vol = np.random.default_rng(0).integers(0, 1000, size=(N, 6, 5)).astype(np.int16)
    info = write_series(folder, vol, orientation=(1, 0, 0, 0, 1, 0), slice_spacing=STEP)
    files = sorted(info["files"], key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    return files, vol


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[:100])  # 100 bytes: inside the preamble


@pytest.mark.parametrize("how", ["empty", "truncated"])
@pytest.mark.parametrize("which", [0, 3, N - 1])
def test_unreadable_slice_is_an_error_naming_it(tmp_path: Path, how: str, which: int) -> None:
    files, _ = _series(tmp_path / "s")
    _damage(files[which], how)
    with pytest.raises(SeriesError) as info:
        read_image(tmp_path / "s")
    assert files[which].name in str(info.value)
    assert info.value.field == "allow_gaps"


def test_allow_gaps_reads_around_a_missing_slice_and_says_where(tmp_path: Path) -> None:
    files, _ = _series(tmp_path / "s")
    intact = read_image(tmp_path / "s").array
    z_missing = float(pydicom.dcmread(files[3]).ImagePositionPatient[2])
    _damage(files[3], "empty")
    img = read_image(tmp_path / "s", allow_gaps=True)
    assert img.tags["unreadable_slices"] == 1
    gaps = img.tags["missing_slices"]
    assert [(g["after_slice"], g["count"]) for g in gaps] == [(2, 1)]
    assert gaps[0]["position_mm"] == pytest.approx(z_missing)  # axial: the normal is +z
    # resampled over the gap onto the 1.5 mm grid: N slices again, the read ones unchanged
    assert img.array.shape == intact.shape and img.tags["resampled"] is True
    assert img.spacing[2] == pytest.approx(STEP)
    for k in range(N):
        if k != 3:
            np.testing.assert_allclose(img.array[:, :, k], intact[:, :, k], atol=1e-4)
    # the missing one is interpolated from its neighbours (and said to be missing above)
    np.testing.assert_allclose(img.array[:, :, 3], (intact[:, :, 2] + intact[:, :, 4]) / 2, atol=1e-3)


def test_allow_gaps_at_an_end_of_the_stack_still_counts_the_file(tmp_path: Path) -> None:
    files, _ = _series(tmp_path / "s")
    _damage(files[-1], "truncated")
    img = read_image(tmp_path / "s", allow_gaps=True)
    assert img.array.shape[2] == N - 1
    assert img.tags["unreadable_slices"] == 1 and img.tags["missing_slices"] == []


def test_notes_and_thumbnails_next_to_the_slices_are_still_ignored(tmp_path: Path) -> None:
    _series(tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("study notes")
    (tmp_path / "s" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    img = read_image(tmp_path / "s")
    assert img.array.shape[2] == N and img.tags["skipped_files"] == 2

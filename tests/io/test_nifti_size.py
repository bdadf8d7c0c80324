"""A NIfTI header claiming far more data than its file holds is refused before allocation.

Before, a 1 kB file whose header said 800^3 float32 voxels made nibabel allocate
about 2 GB before it found the data short.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvl.errors import ImageReadError
from medvl.io import read_image


def _lying_file(path: Path, claimed: tuple[int, int, int], gz: bool) -> Path:
    """A small real volume whose header is then edited to claim ``claimed`` voxels."""
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    raw = bytearray(img.header.binaryblock) + bytes(4) + np.zeros(64, np.float32).tobytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    hdr.set_data_shape(claimed)
    raw[:348] = hdr.binaryblock
    data = bytes(raw)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_header_claiming_800_cubed_voxels_on_a_tiny_file_is_refused(tmp_path: Path, gz: bool) -> None:
    f = _lying_file(tmp_path / ("big.nii.gz" if gz else "big.nii"), (800, 800, 800), gz)
    assert f.stat().st_size < 2000
    with pytest.raises(ImageReadError) as info:
        read_image(f)
    assert info.value.field == "dim" and "800x800x800" in str(info.value)


# Run in a child so nothing else this process holds is counted. tracemalloc sees NumPy's
# allocations when they are requested (an untouched array would not show in the RSS).
CHILD = """
import sys, tracemalloc
from medvl.errors import ImageReadError
from medvl.io import read_image
tracemalloc.start()
try:
    read_image(sys.argv[1])
except ImageReadError:
    pass
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.parametrize("gz", [False, True])
def test_refusal_comes_before_the_allocation(tmp_path: Path, gz: bool) -> None:
    f = _lying_file(tmp_path / ("big.nii.gz" if gz else "big.nii"), (800, 800, 800), gz)
    out = subprocess.run([sys.executable, "-c", CHILD, str(f)], capture_output=True, text=True, timeout=120,
                         check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    # the claimed float32 volume alone is 1953 MiB
    assert peak < 64 * 2**20, f"peak allocation {peak / 2**20:.0f} MiB: the 2 GB array was allocated"


def test_truncated_large_gzip_is_refused_by_reading_the_stream(tmp_path: Path, monkeypatch) -> None:
    """Within deflate's ratio yet short: caught by decompressing once, without keeping the data."""
    import medvl.io.nifti as nifti

    monkeypatch.setattr(nifti, "STREAM_CHECK_BYTES", 1024)
    img = nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    full = tmp_path / "full.nii"
    nib.save(img, full)
    data = full.read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(ImageReadError, match="cannot hold"):
        read_image(short)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(read_image(good).array.shape, (20, 20, 20))

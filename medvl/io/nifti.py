"""NIfTI-1 / NIfTI-2 reader (``.nii``, ``.nii.gz``) giving RAS+ canonical volumes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from medvl.errors import ImageReadError
from medvl.io.dicom_pixels import check_size
from medvl.io.geometry import voxel_sizes
from medvl.io.image import MedicalImage

NonFinite = Literal["zero", "keep", "error"]

#: deflate cannot compress better than about 1032:1, so a .nii.gz smaller than
#: 1/1032 of the data its header claims cannot hold it
MAX_DEFLATE_RATIO = 1032
#: when reading would allocate more than this, a .nii.gz is decompressed once (without
#: keeping the output) to check it holds what its header claims, before allocating
STREAM_CHECK_BYTES = 256 * 2**20


def _gzip_length(path: Path, want: int) -> int:
    """Decompressed length of a gzip file, reading no further than ``want`` bytes."""
    import gzip
    import zlib

    n = 0
    try:
        with gzip.open(path, "rb") as fh:
            while n < want:
                chunk = fh.read(min(16 * 2**20, want - n))
                if not chunk:
                    break
                n += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a truncated or corrupt stream holds what was read before the damage
    return n


def _check_data_size(img: nib.Nifti1Image | nib.Nifti2Image, path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a header that claims more data than the file can hold, before allocating it.

    A damaged or hostile header can claim 800^3 voxels on a 1 kB file; nibabel would
    allocate the whole array (gigabytes) before finding the data short.
    """
    header = img.header
    try:
        need = int(header["vox_offset"]) + math.prod(shape) * header.get_data_dtype().itemsize
    except (TypeError, ValueError, KeyError):
        return  # nibabel reads what it can and reports the rest
    size = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    if gz:
        allocated = max(need, 4 * math.prod(shape[:3]))  # the file's data, then one float32 volume
        holds = size * MAX_DEFLATE_RATIO >= need and (
            allocated <= STREAM_CHECK_BYTES or _gzip_length(path, need) >= need)
    else:
        holds = size >= need
    if not holds:
        raise ImageReadError(
            f"the header claims {'x'.join(map(str, shape))} voxels ({need:,} bytes with its offset) but the "
            f"file {'cannot hold them' if gz else f'has {size:,} bytes'}: truncated, or a damaged header",
            path=path, field="dim", expected="a header that matches the data in the file",
        )


def read_nifti(
    path: str | Path,
    *,
    frame: int | None = None,
    max_voxels: int | None = None,
    nonfinite: NonFinite = "zero",
    modality: str = "OT",
) -> MedicalImage:
    """Read a NIfTI volume as ``(x, y, z)`` float32 in RAS+, as ``nib.as_closest_canonical``.

    Args:
        path: ``.nii`` or ``.nii.gz`` (NIfTI-1 or NIfTI-2).
        frame: for a 4D file, the volume to read (0-based); a 4D file with more than
            one volume needs it.
        max_voxels: refuse volumes with more voxels than this, before loading data.
        nonfinite: what to do with NaN/inf voxels (resampled maps have them outside
            the field of view): ``"zero"`` replaces them by 0, ``"keep"`` leaves them,
            ``"error"`` raises; the count goes to ``tags["nonfinite_voxels"]``. A
            volume with no finite voxel at all is always an error.
        modality: the modality to report (NIfTI does not store one).

    Raises:
        ImageReadError: unreadable, zero-sized, wrong dimensionality, non-finite values.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError("file not found", path=p)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # noqa: BLE001 - nibabel raises ImageFileError, EOFError, gzip errors...
        raise ImageReadError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", path=p,
                             expected="a NIfTI-1 or NIfTI-2 .nii/.nii.gz") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(f"not a NIfTI image ({type(img).__name__})", path=p)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ImageReadError(f"zero-sized or degenerate image, shape {shape}", path=p, field="dim",
                             expected="a 3D shape with positive sizes")
    if len(shape) > 4 and any(s != 1 for s in shape[4:]):
        raise ImageReadError(f"{len(shape)}D image {shape} not supported", path=p, field="dim",
                             expected="3D, or 4D with frame=<index>")
    n_vol = shape[3] if len(shape) >= 4 else 1
    if n_vol > 1 and frame is None:
        raise ImageReadError(f"4D image with {n_vol} volumes {shape}", path=p, field="dim",
                             expected="frame=<index> to read one volume")
    if frame is not None and not 0 <= frame < n_vol:
        raise ImageReadError(f"frame {frame} out of range", path=p, field="dim",
                             expected=f"0 <= frame < {n_vol}")
    check_size(math.prod(shape[:3]), max_voxels, p, "x".join(map(str, shape[:3])))
    _check_data_size(img, p, shape)
    try:
        canon = nib.as_closest_canonical(img)
        if len(shape) >= 4:
            # slicing the array proxy applies scl_slope / scl_inter, as get_fdata does
            index = (slice(None),) * 3 + (frame or 0,) + (0,) * (len(shape) - 4)  # 5D+: singleton tail
            data = np.asarray(canon.dataobj[index], dtype=np.float32)
        else:
            data = canon.get_fdata(dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - truncated gzip / short data
        raise ImageReadError(f"image data cannot be read: truncated or corrupt ({exc})", path=p) from None
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    tags: dict[str, object] = {"format": "NIfTI-2" if isinstance(img, nib.Nifti2Image) else "NIfTI-1"}
    bad = ~np.isfinite(data)
    if bad.any():
        count = int(bad.sum())
        if count == data.size or nonfinite == "error":
            what = "all voxels are" if count == data.size else f"{count:,} of {data.size:,} voxels are"
            raise ImageReadError(f"{what} NaN or infinite", path=p, field="data",
                                 expected="finite values")
        if nonfinite == "zero":
            data[bad] = 0.0
        tags["nonfinite_voxels"] = count
    affine = np.asarray(canon.affine, dtype=np.float64)
    return MedicalImage(array=np.ascontiguousarray(data), spacing=voxel_sizes(affine), affine=affine,
                        modality=modality, photometric_interpretation="MONOCHROME2", tags=tags, path=p)

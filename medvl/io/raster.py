"""PNG / JPEG reader (corpora shipped as pictures, e.g. MIMIC-CXR-JPG), via Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvl.errors import ImageReadError
from medvl.io.dicom_pixels import check_size
from medvl.io.image import MedicalImage


def read_raster(path: str | Path, *, max_voxels: int | None = None, modality: str = "OT") -> MedicalImage:
    """Read a PNG or JPEG file.

    Grayscale pictures (8- or 16-bit) give ``(rows, cols)`` float32 holding the stored
    values; colour pictures give ``(rows, cols, 3)`` RGB. A picture has no physical
    units or pixel size: spacing is 1.0 with ``tags["spacing_source"] = "assumed"``.

    Raises:
        ImageReadError: unreadable, truncated, or larger than ``max_voxels``.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError("file not found", path=p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                check_size(w * h, max_voxels, p, f"{h}x{w}")
                im.load()
                mode = im.mode
                # keep grayscale as stored (8/16-bit); bring every colour mode to RGB
                if mode == "LA":
                    im, mode = im.convert("L"), "L"
                elif mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"):
                    im, mode = im.convert("RGB"), "RGB"
                arr = np.asarray(im)
                if mode == "RGB" and im.mode == "RGB" and arr.ndim == 3 and \
                        np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
                    # grey pictures saved as palette or RGB (common for exported radiographs)
                    arr, mode = np.ascontiguousarray(arr[..., 0]), "L"
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"not a readable PNG/JPEG picture ({exc})", path=p) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"truncated or corrupt picture ({exc})", path=p) from None
    if arr.size == 0:
        raise ImageReadError("empty picture", path=p, expected="positive width and height")
    color = arr.ndim == 3
    bits = 1 if mode == "1" else (16 if arr.dtype == np.uint16 or mode.startswith("I") else 8)
    return MedicalImage(
        array=arr.astype(np.float32), spacing=(1.0, 1.0), affine=None, modality=modality,
        photometric_interpretation="RGB" if color else "MONOCHROME2",
        tags={"format": p.suffix.lower().lstrip("."), "mode": mode, "BitsStored": bits,
              "spacing_source": "assumed"},
        path=p,
    )

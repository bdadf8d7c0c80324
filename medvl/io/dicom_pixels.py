"""Low-level DICOM steps: open a file, check its pixel module, decode, modality LUT.

Each function turns library exceptions into medvl errors that name the file and
what was wrong, so callers (the single-file reader, the series reader, datasets
that skip bad studies) never see a raw ``KeyError`` from inside pydicom.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medvl.errors import ImageReadError, MissingDecoderError
from medvl.io.image import VoiLut

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntax UID prefix -> the pip packages that decode it (pydicom's pylibjpeg plugins)
_DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


def decoder_packages(transfer_syntax: str) -> str:
    """The pip packages that decode ``transfer_syntax`` (``"pylibjpeg pylibjpeg-openjpeg"``...)."""
    return _DECODER_PACKAGES.get(str(transfer_syntax), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")


def open_dicom(path: str | Path, *, stop_before_pixels: bool = False,
               defer_size: int | None = None) -> Dataset:
    """Read a DICOM file, with or without the 128-byte preamble.

    Raises:
        ImageReadError: missing file, not DICOM, or a header that cannot be parsed.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError("file not found", path=p)
    if p.stat().st_size == 0:
        raise ImageReadError("file is empty", path=p, expected="a DICOM file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=stop_before_pixels,
                                     defer_size=defer_size)
                _check_complete(ds, caught, p)
                return ds
            except InvalidDicomError:
                # Files without the DICM preamble (older writers) are still DICOM;
                # read them forced and accept only if they carry DICOM image tags.
                # Only when the file starts like a data set (a group 0002-0008 tag),
                # so a video or archive in a series folder is not parsed as one.
                if not _starts_like_dataset(p):
                    raise
                ds = pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels,
                                     defer_size=defer_size)
                if not any(k in ds for k in ("SOPClassUID", "Rows", "Modality", *PIXEL_KEYWORDS)):
                    raise InvalidDicomError("no DICOM elements") from None
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    # pydicom sets encoding from what it found; record it for decoding
                    ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = (
                        pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR
                        else pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian
                        else pydicom.uid.ExplicitVRBigEndian
                    )
                _check_complete(ds, caught, p)
                return ds
    except ImageReadError:
        raise
    except InvalidDicomError:
        raise ImageReadError("not a DICOM file", path=p,
                             expected="a DICOM Part 10 file (DICM preamble)") from None
    except (EOFError, OSError) as exc:
        raise ImageReadError(f"truncated or unreadable DICOM file ({exc})", path=p) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt headers
        raise ImageReadError(
            f"corrupt DICOM header ({type(exc).__name__}: {exc})", path=p
        ) from None


def _starts_like_dataset(path: Path) -> bool:
    """True when the first tag of a preamble-less file is in groups 0002-0010 (either byte order)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        return False
    little, big = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    return 0x0002 <= little <= 0x0010 or 0x0002 <= big <= 0x0010


def _check_complete(ds: Dataset, caught: list[warnings.WarningMessage], path: Path) -> None:
    """pydicom only warns when a file ends early; a truncated header is an error here."""
    for w in caught:
        text = str(w.message)
        if "End of file reached" in text or "truncated" in text.lower():
            raise ImageReadError(f"truncated DICOM file ({text.strip()})", path=path)
    if len(ds) == 0:
        raise ImageReadError("no DICOM elements could be read (truncated or not DICOM)", path=path)


def _int_tag(ds: Dataset, keyword: str, path: Path, *, required: bool = True) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        if required:
            raise ImageReadError(f"missing {keyword}", path=path, field=keyword,
                                 expected="a value in the Image Pixel module")
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(f"invalid {keyword} {value!r}", path=path,
                             field=keyword, expected="an integer") from None


def pixel_geometry(ds: Dataset, path: Path) -> tuple[int, int, int, int]:
    """Check the Image Pixel module; return ``(rows, cols, frames, samples)``.

    Raises:
        ImageReadError: no pixel data, or a missing / invalid pixel module tag.
    """
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise ImageReadError("no pixel data in file", path=path, field="PixelData",
                             expected="an image object (CT, MR, CR, DX, ...)")
    rows = _int_tag(ds, "Rows", path)
    cols = _int_tag(ds, "Columns", path)
    _int_tag(ds, "BitsAllocated", path)
    if "PixelData" in ds:
        _int_tag(ds, "BitsStored", path)
        _int_tag(ds, "PixelRepresentation", path)
    samples = _int_tag(ds, "SamplesPerPixel", path, required=False) or 1
    n_frames = _int_tag(ds, "NumberOfFrames", path, required=False)
    if n_frames is not None and n_frames < 1:  # 0 would pass as 1 and skip the multi-frame checks
        raise ImageReadError(f"NumberOfFrames {n_frames}", path=path, field="NumberOfFrames",
                             expected="an integer >= 1 (or no NumberOfFrames for one frame)")
    frames = n_frames or 1
    if not rows or not cols or rows < 0 or cols < 0 or frames < 1:
        raise ImageReadError(f"empty image ({rows} x {cols} x {frames} frames)", path=path,
                             field="Rows", expected="positive Rows, Columns and NumberOfFrames")
    if "PhotometricInterpretation" not in ds:
        raise ImageReadError("missing PhotometricInterpretation", path=path,
                             field="PhotometricInterpretation", expected="MONOCHROME1/2, RGB, ...")
    return int(rows), int(cols), int(frames), int(samples)


def check_size(n_values: int, max_voxels: int | None, path: Path, what: str) -> None:
    """Refuse an image with more than ``max_voxels`` values, before decoding it."""
    if max_voxels is not None and n_values > max_voxels:
        raise ImageReadError(
            f"image too large: {what} = {n_values:,} values, above the limit of "
            f"{max_voxels:,} (option max_voxels)", path=path, field="Rows",
            expected=f"at most {max_voxels:,} voxels",
        )


def transfer_syntax(ds: Dataset) -> str:
    """The dataset's Transfer Syntax UID as a string ('' when unknown)."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def decode_pixels(ds: Dataset, path: Path, index: int | None = None) -> np.ndarray:
    """Decode pixel data, converting YBR to RGB and palette colour to RGB.

    Args:
        ds: the dataset.
        path: its file, for error messages.
        index: decode only this frame (0-based); None decodes all frames.

    Returns:
        ``(frames?, rows, cols[, 3])`` array in stored values (colour as RGB);
        one frame gives ``(rows, cols[, 3])``.

    Raises:
        MissingDecoderError: compressed data with no installed decoder; names the package.
        ImageReadError: truncated or corrupt pixel data.
    """
    ts = transfer_syntax(ds)
    uid = pydicom.uid.UID(ts) if ts else None
    if uid is not None and not uid.is_transfer_syntax:
        raise ImageReadError(f"unknown transfer syntax {ts!r}", path=path, field="TransferSyntaxUID",
                             expected="a DICOM transfer syntax UID")
    if uid is not None and uid.is_compressed:
        try:
            decoder = pydicom.pixels.get_decoder(uid)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise MissingDecoderError(
                f"no installed decoder for transfer syntax {uid.name} ({ts})", path=path,
                field="TransferSyntaxUID", expected=f"pip install {decoder_packages(ts)}",
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index)
            arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = " ".join(lines).lower()
        if "missing" in text or "no pixel data decoders" in text or "not available" in text:
            raise MissingDecoderError(
                f"no usable decoder for transfer syntax {uid.name if uid else ts}: {lines[0]}",
                path=path, field="TransferSyntaxUID", expected=f"pip install {decoder_packages(ts)}",
            ) from None
        # every installed plugin tried and failed: the data itself is bad
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise ImageReadError(f"pixel data cannot be decoded, corrupt or non-conformant ({detail})",
                             path=path, field="PixelData") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise ValueError, KeyError, struct.error,
        # and the Rust ones (pylibjpeg-rle) a pyo3 PanicException, which is not an Exception
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"pixel data cannot be decoded: truncated or corrupt ({first})",
                             path=path, field="PixelData") from None
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi == "PALETTE COLOR":
        try:
            arr = pydicom.pixels.apply_color_lut(arr, _little_endian_palette(ds))
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f"palette colour lookup failed ({exc})", path=path,
                                 field="RedPaletteColorLookupTableData") from None
    return arr


_PALETTE_DATA = ("RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
                 "BluePaletteColorLookupTableData", "AlphaPaletteColorLookupTableData")


def _little_endian_palette(ds: Dataset) -> Dataset:
    """A view of ``ds`` whose 16-bit palette LUT data is little-endian.

    pydicom 3.0's ``apply_color_lut`` reads non-segmented LUT data in the machine's
    (little-endian) byte order whatever the file's transfer syntax, so a big-endian
    file gets byte-swapped colours (``OBXXXX1A_expb.dcm`` differs from
    ``OBXXXX1A.dcm`` by up to 65025). Swap the bytes for it; segmented LUTs are
    decoded with the right byte order already.
    """
    encoding = getattr(ds, "original_encoding", (None, True))
    little = encoding[1] if encoding and encoding[1] is not None else True
    desc = ds.get("RedPaletteColorLookupTableDescriptor")
    if little or desc is None or "RedPaletteColorLookupTableData" not in ds:
        return ds
    n = int(desc[0]) or 2**16
    if len(ds.RedPaletteColorLookupTableData) != 2 * n:  # 8-bit entries: no byte order
        return ds
    out = copy.copy(ds)  # shallow: pixel data and other elements shared, not copied
    for kw in _PALETTE_DATA:
        if kw in ds:
            swapped = np.frombuffer(ds[kw].value, dtype=">u2").astype("<u2").tobytes()
            setattr(out, kw, swapped)
    return out


def photometric(ds: Dataset) -> str:
    """The photometric interpretation of decoded pixels (YBR and palette become RGB)."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        return pi
    return "RGB"


def rescale(arr: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Linear modality LUT in float32: ``stored * slope + intercept`` (PS3.3 C.11.1)."""
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


#: Largest |RescaleSlope| / |RescaleIntercept| taken as real: far beyond any modality's
#: units, and small enough that stored values times it stay finite in float32.
MAX_RESCALE = 1e12


def tag_float(item: Dataset, keyword: str, default: float, path: Path | None, *,
              positive: bool = False, limit: float = MAX_RESCALE) -> float:
    """A numeric tag as a finite float, or ``default`` when absent or empty.

    Raises:
        ImageReadError: the value is not a number, not finite (NaN, inf, 1e400), zero or
            negative where ``positive``, or beyond ``limit`` in magnitude; names the tag.
    """
    value = item.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ImageReadError(f"{keyword} {value!r} is not a number", path=path, field=keyword,
                             expected="a decimal number") from None
    if not math.isfinite(out) or abs(out) > limit or (positive and out <= 0):
        want = f"a finite number in (0, {limit:g}]" if positive else f"a finite number within +-{limit:g}"
        raise ImageReadError(f"{keyword} {value!r} is not a usable value", path=path, field=keyword,
                             expected=want)
    return out


def rescale_of(item: Dataset | None, path: Path | None = None) -> tuple[float, float] | None:
    """``(slope, intercept)`` from a dataset or functional-group item, or None.

    Raises:
        ImageReadError: a slope or intercept that is not a finite, sensible number (a
            slope of 0 would flatten the image), naming the tag.
    """
    if item is None or ("RescaleSlope" not in item and "RescaleIntercept" not in item):
        return None
    slope = tag_float(item, "RescaleSlope", 1.0, path)
    if slope == 0.0:
        raise ImageReadError("RescaleSlope 0 maps every pixel to the intercept", path=path,
                             field="RescaleSlope", expected="a non-zero slope")
    return slope, tag_float(item, "RescaleIntercept", 0.0, path)


def modality_lut(arr: np.ndarray, ds: Dataset, rescale_pair: tuple[float, float] | None) -> np.ndarray:
    """Apply the modality LUT: a LUT sequence, or a rescale, or nothing; float32 out.

    Args:
        arr: stored values of one or more frames of a grayscale image.
        ds: the dataset (for a Modality LUT Sequence).
        rescale_pair: ``(slope, intercept)`` for these frames, or None for identity.
    """
    if ds.get("ModalityLUTSequence"):
        return pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float32)
    if rescale_pair is None:
        return arr.astype(np.float32)
    return rescale(arr, *rescale_pair)


def _as_list(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [float(v) for v in value if v not in (None, "")]
    return [float(value)]


def windows_of(item: Dataset | None) -> list[tuple[float, float]]:
    """Window ``(center, width)`` pairs stored in a dataset or functional-group item."""
    if item is None:
        return []
    try:
        centers = _as_list(item.get("WindowCenter"))
        widths = _as_list(item.get("WindowWidth"))
    except (TypeError, ValueError):
        return []
    return [(c, w) for c, w in zip(centers, widths, strict=False) if w > 0]  # extra values of either are ignored


def voi_luts_of(ds: Dataset) -> list[VoiLut]:
    """VOI LUT tables of a dataset, materialised with pydicom's own ``apply_voi``."""
    out: list[VoiLut] = []
    for index, item in enumerate(ds.get("VOILUTSequence") or []):
        desc = item.get("LUTDescriptor")
        if desc is None or item.get("LUTData") is None:
            continue
        n = int(desc[0]) or 2**16
        first = int(desc[1])
        # first-mapped may be stored unsigned although negative (US VR); PS3.3 C.11.2.1.1
        if first >= 2**15 and ds.get("PixelRepresentation", 0) == 1:
            first -= 2**16
        probe = np.arange(first, first + n, dtype=np.int64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = pydicom.pixels.apply_voi(probe, ds, index)
        except Exception as exc:  # noqa: BLE001
            # a damaged display table must not hide the physical values: the caller
            # gets the image without it (and windows, if any)
            warnings.warn(f"VOI LUT {index} ignored: invalid table ({exc})", stacklevel=2)
            continue
        out.append(VoiLut(first, int(desc[2]), np.asarray(data), str(item.get("LUTExplanation", ""))))
    return out

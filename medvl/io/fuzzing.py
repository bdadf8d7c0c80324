"""Seeded mutations of real image files, and a runner that checks how the readers fail.

The contract under test: :func:`medvl.io.read_image` on any file either returns an
image or raises a :class:`~medvl.errors.MedvlError` that names the file; never a raw
exception, never a hang, never an allocation the file cannot justify. The suite runs
about 200 mutations (``tests/io/test_fuzz.py``); ``benchmarks/fuzz/run_fuzz.py`` runs
thousands in worker processes and records the result.

Mutations, each reproducible from ``(file, kind, seed)``:

``truncate``  the file cut at a random offset (inside the preamble, the header, the data)
``flip``      1 to 20 random bytes changed, mostly in the first 4 kB (lengths, VRs, values)
``tag``       DICOM: one element set to an absurd value or removed (Rows 0, NumberOfFrames
              -1 or 10^9, RescaleSlope NaN/1e400, PixelSpacing inf, a bogus transfer
              syntax...), written back with pydicom; NIfTI: a header field set to an absurd
              value (dims of 800^3 or 2^31-1, negative dims, NaN pixdim or scl_slope,
              unknown datatype, vox_offset past the end)
``size``      a length field claims an absurd size: DICOM Pixel Data's length, or the NIfTI
              dims, on an otherwise intact file
"""

from __future__ import annotations

import gzip
import io
import struct
import time
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("truncate", "flip", "tag", "size")

# Files that packages ship, in every format the readers take: (package, relative path).
DICOM_FILES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm",
    "vlut_04.dcm", "emri_small.dcm", "eCT_Supplemental.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm",
    "JPEG-LL.dcm", "liver_1frame.dcm", "RG1_UNCR.dcm", "MR2_J2KR.dcm",
)
NIFTI_FILES = ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz")


def shipped_files(*, dicom: Iterable[str] = DICOM_FILES, nifti: Iterable[str] = NIFTI_FILES) -> list[Path]:
    """Paths of real files from pydicom, pydicom-data, nibabel and matplotlib (those installed)."""
    from pydicom.data import get_testdata_file

    out: list[Path] = []
    for name in dicom:
        p = get_testdata_file(name, download=False)  # never download: offline
        if p is not None:
            out.append(Path(p))
    try:
        import nibabel

        base = Path(nibabel.__file__).parent / "tests" / "data"
        out += [base / n for n in nifti if (base / n).is_file()]
    except ImportError:
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
        out += [p for p in (sample / "grace_hopper.jpg", sample / "Minduka_Present_Blue_Pack.png") if p.is_file()]
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------- mutations

_DICOM_ABSURD: tuple[tuple[str, Any], ...] = (
    ("Rows", 0), ("Rows", 65535), ("Columns", 0), ("Columns", 65535), ("NumberOfFrames", "0"),
    ("NumberOfFrames", "-1"), ("NumberOfFrames", "1000000000"), ("BitsAllocated", 0), ("BitsAllocated", 7),
    ("BitsAllocated", 64), ("BitsStored", 40), ("SamplesPerPixel", 0), ("SamplesPerPixel", 5),
    ("PixelRepresentation", 7), ("RescaleSlope", "nan"), ("RescaleSlope", "1e400"), ("RescaleSlope", "0"),
    ("RescaleIntercept", "-inf"), ("PixelSpacing", ["inf", "0.5"]), ("PixelSpacing", ["-1", "-1"]),
    ("SliceThickness", "inf"), ("SpacingBetweenSlices", "nan"), ("ImagePositionPatient", ["nan", "0", "0"]),
    ("ImageOrientationPatient", ["0", "0", "0", "0", "0", "0"]), ("PhotometricInterpretation", "XYZ"),
    ("PlanarConfiguration", 9), ("WindowWidth", "-5"), ("WindowCenter", "nan"), ("VOILUTFunction", "CUBE"),
    ("Rows", None), ("Columns", None), ("BitsAllocated", None), ("PhotometricInterpretation", None),
    ("PixelData", None),
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    if len(data) < 2:
        return b""
    # a third inside the first 400 bytes (preamble, meta, NIfTI header), the rest anywhere
    hi = min(len(data) - 1, 400) if rng.random() < 0.33 else len(data) - 1
    return data[: int(rng.integers(0, hi + 1))]


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 21))):
        hi = min(len(b), 4096) if rng.random() < 0.7 else len(b)
        if hi:
            b[int(rng.integers(0, hi))] = int(rng.integers(0, 256))
    return bytes(b)


def _dicom_tag(data: bytes, rng: np.random.Generator) -> bytes:
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    keyword, value = _DICOM_ABSURD[int(rng.integers(len(_DICOM_ABSURD)))]
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if value is None:
        if tag in ds:
            del ds[tag]
    else:
        ds[tag] = DataElement(tag, dictionary_VR(tag), value)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _nifti_parts(data: bytes) -> tuple[bytes, bool]:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data), True
    return data, False


def _nifti_field(raw: bytes, rng: np.random.Generator) -> bytes:
    """One header field of a NIfTI-1 or -2 file set to an absurd value."""
    b = bytearray(raw)
    nifti2 = struct.unpack_from("<i", b, 0)[0] == 540 or struct.unpack_from(">i", b, 0)[0] == 540
    little = struct.unpack_from("<i", b, 0)[0] in (348, 540)
    e = "<" if little else ">"
    if nifti2:  # NIfTI-2: dims int64 at 16, pixdim float64 at 104, vox_offset int64 at 168, scl at 176
        fields = [("dim", 16, "q"), ("pixdim", 104, "d"), ("vox_offset", 168, "q"), ("scl_slope", 176, "d"),
                  ("datatype", 12, "h")]
    else:  # NIfTI-1: dims int16 at 40, datatype at 70, pixdim float32 at 76, vox_offset at 108, scl at 112
        fields = [("dim", 40, "h"), ("pixdim", 76, "f"), ("vox_offset", 108, "f"), ("scl_slope", 112, "f"),
                  ("datatype", 70, "h")]
    name, off, fmt = fields[int(rng.integers(len(fields)))]
    if name == "dim":
        i = int(rng.integers(1, 5))
        limit = 2**31 - 1 if fmt == "q" else 32767
        value = [800, limit, -5, 0][int(rng.integers(4))]
        struct.pack_into(e + fmt, b, off + i * struct.calcsize(fmt), value)
    elif name in ("pixdim", "scl_slope"):
        i = int(rng.integers(1, 4)) if name == "pixdim" else 0
        struct.pack_into(e + fmt, b, off + i * struct.calcsize(fmt), [float("nan"), float("inf"), -1.0][int(rng.integers(3))])
    elif name == "vox_offset":
        struct.pack_into(e + fmt, b, off, 2**30 if fmt == "q" else 1e9)
    else:
        struct.pack_into(e + fmt, b, off, [0, 3, 9999, -1][int(rng.integers(4))])
    return bytes(b)


def _nifti_size(raw: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(raw)
    nifti2 = struct.unpack_from("<i", b, 0)[0] == 540 or struct.unpack_from(">i", b, 0)[0] == 540
    e = "<" if struct.unpack_from("<i", b, 0)[0] in (348, 540) else ">"
    fmt, off = ("q", 16) if nifti2 else ("h", 40)
    size = struct.calcsize(fmt)
    side = 800 if rng.random() < 0.7 else (2**20 if nifti2 else 32767)
    struct.pack_into(e + fmt, b, off, 3)
    for i in (1, 2, 3):
        struct.pack_into(e + fmt, b, off + i * size, side)
    return bytes(b)


def _dicom_size(data: bytes, rng: np.random.Generator) -> bytes:
    """The Pixel Data element's 32-bit length set to an absurd value (data left as it is)."""
    b = bytearray(data)
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):  # (7FE0,0010) little / big endian
        pos = b.rfind(tag)
        if pos < 0:
            continue
        little = tag[0] == 0xE0
        e = "<" if little else ">"
        vr = bytes(b[pos + 4: pos + 6])
        at = pos + 8 if vr in (b"OB", b"OW", b"OF", b"OD", b"UN") else pos + 4  # explicit long VR or implicit
        if at + 4 > len(b):
            break
        struct.pack_into(e + "I", b, at, [0xFFFFFFF0, 0x7FFFFFFF, min(len(b) * 1000, 0xFFFFFFF0) & ~1][int(rng.integers(3))])
        return bytes(b)
    return _flip(data, rng)


def mutate(path: Path, kind: str, seed: int) -> bytes:
    """The bytes of ``path`` after mutation ``kind`` with ``seed`` (see the module docstring)."""
    data = Path(path).read_bytes()
    rng = _rng(seed)
    name = path.name.lower()
    nifti = name.endswith((".nii", ".nii.gz"))
    if kind == "truncate":
        return _truncate(data, rng)
    if kind == "flip":
        return _flip(data, rng)
    if nifti and kind in ("tag", "size"):
        raw, gz = _nifti_parts(data)
        raw = _nifti_field(raw, rng) if kind == "tag" else _nifti_size(raw, rng)
        return gzip.compress(raw, mtime=0) if gz else raw
    if kind == "tag" and not name.endswith((".png", ".jpg", ".jpeg")):
        try:
            return _dicom_tag(data, rng)
        except Exception:  # noqa: BLE001 - pydicom could not write that value: fall back to bytes
            return _flip(data, rng)
    if kind == "size" and not name.endswith((".png", ".jpg", ".jpeg")):
        return _dicom_size(data, rng)
    return _flip(data, rng)


# ------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """How :func:`medvl.io.read_image` handled one mutated file."""

    source: str
    kind: str
    seed: int
    result: str  # "read", "medvl-error", "raw-exception", "unnamed-error", "non-finite"
    seconds: float
    detail: str = ""


@dataclass
class FuzzReport:
    """Every outcome plus the counts; ``bad`` lists the ones that break the contract."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def bad(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result not in ("read", "medvl-error")]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.result] = out.get(o.result, 0) + 1
        return out


def plan(files: list[Path], n: int, seed: int) -> list[tuple[Path, str, int]]:
    """``n`` seeded ``(file, kind, mutation seed)`` triples spread over the files and kinds."""
    rng = _rng(seed)
    return [(files[i % len(files)], KINDS[int(rng.integers(len(KINDS)))], int(rng.integers(2**31)))
            for i in range(n)]


def check_one(source: Path, kind: str, seed: int, workdir: Path, **read_options: Any) -> Outcome:
    """Mutate ``source``, read the result, and classify what happened."""
    from medvl.errors import MedvlError
    from medvl.io import read_image

    suffix = "".join(source.suffixes[-2:]) if source.name.endswith(".nii.gz") else source.suffix
    target = workdir / f"m{seed}_{kind}{suffix}"
    target.write_bytes(mutate(source, kind, seed))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = read_image(target, **read_options)
        arr = np.asarray(img.array)
        result, detail = ("read", "") if np.isfinite(arr).all() \
            else ("non-finite", f"{int((~np.isfinite(arr)).sum())} non-finite values")
    except MedvlError as exc:
        named = target.name in str(exc)
        result, detail = ("medvl-error" if named else "unnamed-error"), str(exc)[:300]
    except Exception as exc:  # noqa: BLE001 - the point is to catch what escapes
        result = "raw-exception"
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
    finally:
        seconds = time.perf_counter() - t0
        target.unlink(missing_ok=True)
    return Outcome(source.name, kind, seed, result, round(seconds, 4), detail)


def run(files: list[Path], n: int, seed: int, workdir: Path, **read_options: Any) -> FuzzReport:
    """Run ``n`` mutations in this process (see ``benchmarks/fuzz/run_fuzz.py`` for many)."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = FuzzReport()
    for source, kind, s in plan(files, n, seed):
        report.outcomes.append(check_one(source, kind, s, workdir, **read_options))
    return report

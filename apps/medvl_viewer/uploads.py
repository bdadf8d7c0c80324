"""Validation and staging of untrusted uploads.

A file a user drops into the viewer is untrusted: it may be the wrong type, too large,
truncated, a gzip or zip bomb, or a zip whose member names climb out of the target
folder ("zip slip"). Everything here runs *before* any medical-image library sees the
bytes, and every refusal is an :class:`UploadError` that names the file, what was
wrong and what was expected, so the viewer can show it as one clear message.

Checks, in order:

1. the declared size against :attr:`UploadLimits.max_bytes`, before reading a byte;
2. the file name extension against the accepted kinds;
3. the magic bytes: ``DICM`` at offset 128 (DICOM Part 10), ``sizeof_hdr`` 348 or 540
   plus the ``n+1`` / ``n+2`` magic (NIfTI-1 / NIfTI-2), gzip ``1f 8b``, zip ``PK\\x03\\x04``;
4. for gzip and zip: decompression into a private temporary folder under a total-size
   limit, counted while writing (headers can lie), and for zip a member-count limit.

Zip members are never written under their own names: each DICOM member is copied to
``series/00000.dcm``, ``series/00001.dcm``, ... so no member name can choose a path.
A member whose name is absolute or contains ``..`` is refused outright, since it can
only come from a crafted archive.
"""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from medvl.errors import MedvlError

MIB = 1024 * 1024

#: Upload names the viewer accepts, shown to the user in error messages.
ACCEPTED = "a DICOM file (.dcm), a DICOM series as .zip, or NIfTI (.nii / .nii.gz)"

_DICOM_EXTS = {".dcm", ".dicom", ".ima", ""}
_IGNORED_ZIP_PARTS = {"__MACOSX"}
_CHUNK = 1 * MIB


class UploadKind(str, Enum):
    """What a staged upload holds, i.e. how ``medvl.io.read_image`` will see it."""

    DICOM = "dicom"
    DICOM_SERIES = "dicom_series"
    NIFTI = "nifti"


class UploadError(MedvlError):
    """An uploaded file is refused: wrong type, too large, unreadable or unsafe.

    It lives with the viewer, the only place that takes uploads; as a
    :class:`~medvl.errors.MedvlError` it names the file (the viewer passes a neutral
    label, never the browser's file name), the field and what was expected.
    """


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one upload.

    Attributes:
        max_bytes: largest accepted upload, as sent.
        max_unpacked_bytes: largest total size after gunzip or unzip.
        max_zip_members: most entries (files and folders) a zip may list.
    """

    max_bytes: int = 200 * MIB
    max_unpacked_bytes: int = 1024 * MIB
    max_zip_members: int = 4000


@dataclass(frozen=True)
class StagedUpload:
    """An upload that passed every check and sits in a private folder.

    Attributes:
        kind: what it holds.
        path: what to pass to ``medvl.io.read_image``: a file, or a folder of DICOM files.
        n_files: number of image files staged (1, or the DICOM members of a zip).
    """

    kind: UploadKind
    path: Path
    n_files: int = 1
    frames: int = 1
    size: int = 0

    def describe(self) -> str:
        """What the upload is, in words that name no file ("NIfTI volume, 4 frames, 2.1 MiB")."""
        kind = {UploadKind.DICOM: "DICOM file", UploadKind.DICOM_SERIES: f"DICOM series of {self.n_files} files",
                UploadKind.NIFTI: "NIfTI image"}[self.kind]
        frames = f", {self.frames} volumes" if self.frames > 1 else ""
        size = f"{self.size / MIB:.1f} MiB" if self.size >= MIB else f"{max(self.size, 1) / 1024:.0f} KiB"
        return f"{kind}{frames}, {size}"


def _extension(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return PurePosixPath(lower).suffix


def is_dicom(head: bytes) -> bool:
    """Whether ``head`` (the first 132+ bytes) starts a DICOM Part 10 file (``DICM`` at 128)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_nifti_header(head: bytes) -> bool:
    """Whether ``head`` starts a NIfTI-1 or NIfTI-2 header, in either byte order.

    NIfTI-1: ``sizeof_hdr`` (int32 at 0) is 348 and ``magic`` at 344 is ``n+1\\0`` or
    ``ni1\\0``. NIfTI-2: ``sizeof_hdr`` is 540 and ``magic`` at 4 starts ``n+2\\0``.
    """
    if len(head) < 4:
        return False
    for order in "<>":
        (size,) = struct.unpack(order + "i", head[:4])
        if size == 348 and len(head) >= 348:
            return head[344:348] in (b"n+1\x00", b"ni1\x00")
        if size == 540 and len(head) >= 12:
            return head[4:8] in (b"n+2\x00", b"ni2\x00")
    return False


def is_gzip(head: bytes) -> bool:
    """Whether ``head`` starts a gzip stream."""
    return head[:2] == b"\x1f\x8b"


def is_zip(head: bytes) -> bool:
    """Whether ``head`` starts a zip archive (local file header, or an empty archive)."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def stage_upload(
    name: str,
    size: int,
    read: Callable[[], bytes],
    workdir: str | Path,
    limits: UploadLimits = UploadLimits(),
    *,
    label: str | None = None,
) -> StagedUpload:
    """Check an uploaded file and write it, unpacked, into ``workdir``.

    Args:
        name: the file name the browser sent (used for its extension, and in messages
            unless ``label`` is given; never as a path).
        size: the declared size in bytes; checked before ``read`` is called.
        read: returns the file's bytes (e.g. ``UploadedFile.getvalue``).
        workdir: an empty private folder (a ``tempfile.TemporaryDirectory``) to stage into.
        limits: size and member limits.
        label: how messages name the file instead of ``name`` (exported file names often
            carry the patient's name; the viewer shows none).

    Returns:
        The staged upload, ready for ``medvl.io.read_image(staged.path)``.

    Raises:
        UploadError: on a wrong type, a file over a limit, corrupt compression or an
            unsafe zip member; the message names the file and what was expected.
    """
    workdir = Path(workdir)
    ext = _extension(name)
    name = label or name  # from here on, only messages use it
    if size > limits.max_bytes:
        raise UploadError(
            f"file is too large ({size / MIB:.1f} MiB)",
            path=name,
            expected=f"at most {limits.max_bytes / MIB:.0f} MiB",
        )
    if size == 0:
        raise UploadError("file is empty", path=name, expected=ACCEPTED)
    if ext not in _DICOM_EXTS | {".nii", ".nii.gz", ".gz", ".zip"}:
        raise UploadError(f"unsupported file type {ext!r}", path=name, expected=ACCEPTED)
    data = read()
    if len(data) > limits.max_bytes:  # the declared size was wrong
        raise UploadError(
            f"file is too large ({len(data) / MIB:.1f} MiB)",
            path=name,
            expected=f"at most {limits.max_bytes / MIB:.0f} MiB",
        )
    if not data:
        raise UploadError("file is empty", path=name, expected=ACCEPTED)
    head = data[:544]

    if ext == ".zip":
        if not is_zip(head):
            raise UploadError("not a zip archive", path=name, field="magic bytes", expected=ACCEPTED)
        staged = _stage_zip(name, data, workdir, limits)
        return StagedUpload(staged.kind, staged.path, n_files=staged.n_files, size=size)
    if ext in (".nii.gz", ".gz"):
        if not is_gzip(head):
            raise UploadError("not gzip-compressed", path=name, field="magic bytes", expected=ACCEPTED)
        target = workdir / "upload.nii"
        _gunzip_bounded(name, data, target, limits.max_unpacked_bytes)
        with target.open("rb") as fh:
            if not is_nifti_header(fh.read(544)):
                raise UploadError(
                    "the gzip stream does not hold a NIfTI image",
                    path=name,
                    field="sizeof_hdr",
                    expected="a NIfTI-1 (348) or NIfTI-2 (540) header",
                )
        return StagedUpload(UploadKind.NIFTI, target, frames=nifti_frames(target), size=size)
    if ext == ".nii":
        if not is_nifti_header(head):
            raise UploadError(
                "not a NIfTI image",
                path=name,
                field="sizeof_hdr",
                expected="a NIfTI-1 (348) or NIfTI-2 (540) header",
            )
        target = workdir / "upload.nii"
        target.write_bytes(data)
        return StagedUpload(UploadKind.NIFTI, target, frames=nifti_frames(target), size=size)
    # .dcm / .dicom / .ima / no extension
    if not is_dicom(head):
        raise UploadError(
            "not a DICOM Part 10 file",
            path=name,
            field="magic bytes",
            expected="'DICM' at byte 128 (" + ACCEPTED + ")",
        )
    target = workdir / "upload.dcm"
    target.write_bytes(data)
    return StagedUpload(UploadKind.DICOM, target, size=size)


def nifti_frames(path: Path) -> int:
    """Volumes in a NIfTI file (the 4th dimension; 1 for a 3D file), from its header only.

    A 4D file (fMRI, dynamic CT, a stack of masks) is read one volume at a time; the
    viewer offers the choice.
    """
    import nibabel as nib

    try:
        shape = tuple(nib.load(str(path)).shape)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the reader reports a bad file when it is read
        return 1
    return int(shape[3]) if len(shape) >= 4 else 1


def _gunzip_bounded(name: str, data: bytes, target: Path, limit: int) -> None:
    """Decompress ``data`` into ``target``, refusing to write more than ``limit`` bytes."""
    written = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise UploadError(
                        "decompresses to more than the allowed size",
                        path=name,
                        expected=f"at most {limit / MIB:.0f} MiB uncompressed",
                    )
                dst.write(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise UploadError(f"gzip stream is corrupt ({exc})", path=name) from None


def _unsafe_member_name(member: str) -> bool:
    """A name that is absolute, has a drive, or climbs with ``..`` (zip slip)."""
    norm = member.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    return norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts


def _stage_zip(name: str, data: bytes, workdir: Path, limits: UploadLimits) -> StagedUpload:
    """Copy the DICOM members of a zip into ``workdir/series`` under generated names."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"zip archive cannot be read ({exc})", path=name) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_members:
            raise UploadError(
                f"zip lists {len(infos)} entries",
                path=name,
                expected=f"at most {limits.max_zip_members}",
            )
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_unpacked_bytes:
            raise UploadError(
                f"zip unpacks to {declared / MIB:.1f} MiB",
                path=name,
                expected=f"at most {limits.max_unpacked_bytes / MIB:.0f} MiB uncompressed",
            )
        series = workdir / "series"
        series.mkdir(parents=True, exist_ok=True)
        written = 0
        n_dicom = 0
        for info in infos:
            member = info.filename
            if _unsafe_member_name(member):
                raise UploadError(
                    "zip member has an unsafe path", path=name, field=member, expected="relative member names"
                )
            if info.is_dir() or _IGNORED_ZIP_PARTS & set(PurePosixPath(member).parts):
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError("zip member is a symbolic link", path=name, field=member, expected="regular files")
            target = series / f"{n_dicom:05d}.dcm"
            try:
                with archive.open(info) as src, target.open("wb") as dst:
                    head = src.read(132)
                    if not is_dicom(head):
                        continue  # README, DICOMDIR-less junk, thumbnails: not part of the series
                    dst.write(head)
                    written += len(head)
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_unpacked_bytes:
                            raise UploadError(
                                "zip unpacks to more than the allowed size",
                                path=name,
                                expected=f"at most {limits.max_unpacked_bytes / MIB:.0f} MiB uncompressed",
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
                raise UploadError(f"zip member cannot be extracted ({exc})", path=name, field=member) from None
            finally:
                if target.exists() and target.stat().st_size < 132:
                    target.unlink()
            if target.exists():
                n_dicom += 1
    if n_dicom == 0:
        shutil.rmtree(series, ignore_errors=True)
        raise UploadError("zip holds no DICOM files", path=name, expected="a zip of one DICOM series")
    return StagedUpload(UploadKind.DICOM_SERIES, series, n_files=n_dicom)

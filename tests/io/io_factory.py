"""Writers of small synthetic DICOM files for the io tests (pydicom only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    position: Sequence[float] | None = (0, 0, 0),
    pixel_spacing: Sequence[float] = (0.8, 0.6),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference: str | None = None,
    instance_number: int = 1,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = (40.0, 400.0),
) -> FileDataset:
    """A minimal CT-like single-frame dataset holding ``pixels`` (rows, cols) int16/uint16."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_of_reference or generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20200102"
    ds.InstitutionName = "General Hospital"
    ds.AccessionNumber = "ACC999"
    ds.Modality = modality
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance_number
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 99.0  # deliberately wrong: spacing must come from positions
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    arr = np.ascontiguousarray(pixels)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    ds.PixelData = arr.tobytes()
    return ds


def oblique_orientation(angle_deg: float = 20.0, tilt_deg: float = 10.0) -> list[float]:
    """Row/column cosines of an axial plane rotated about z then about x (oblique)."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(tilt_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    r = rx @ rz
    return [*r[:, 0], *r[:, 1]]


def write_series(
    folder: Path,
    volume: np.ndarray,
    *,
    orientation: Sequence[float],
    origin: Sequence[float] = (-30.0, 20.0, 55.0),
    pixel_spacing: Sequence[float] = (0.8, 0.6),
    slice_spacing: float = 1.5,
    seed: int = 0,
    positions: np.ndarray | None = None,
    **kwargs,
) -> dict:
    """Write ``volume`` (slices, rows, cols) as one file per slice, shuffled.

    File names and InstanceNumbers are a random permutation so a reader that
    trusts either gets the order wrong. Returns the true LPS affine (voxel
    (col, row, slice) -> mm) and the files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    n = volume.shape[0]
    if positions is None:
        positions = np.asarray(origin) + np.outer(np.arange(n) * slice_spacing, normal)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    series_uid, study_uid, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(n):
        ds = make_dataset(volume[k], orientation=iop, position=positions[k],
                          pixel_spacing=pixel_spacing, series_uid=series_uid, study_uid=study_uid,
                          frame_of_reference=frame, instance_number=int(perm[k]) + 1, **kwargs)
        path = folder / f"img_{perm[(k * 7) % n]:04d}_{rng.integers(1e6)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * pixel_spacing[1]
    aff[:3, 1] = iop[3:] * pixel_spacing[0]
    aff[:3, 2] = normal * slice_spacing
    aff[:3, 3] = positions[0]
    return {"affine_lps": aff, "files": files, "series_uid": series_uid}


def save(ds: Dataset, path: Path) -> Path:
    """Save a dataset as a DICOM Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read(path: Path) -> Dataset:
    """Read back a file with pydicom (the independent reference)."""
    return pydicom.dcmread(path)

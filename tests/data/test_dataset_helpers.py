"""Helpers shared by the data-loading tests: tiny image files and manifests on disk.

Images are written with pydicom / nibabel / Pillow so the tests exercise real file
reading. ``read_for_tests`` is a small independent reader used only when
``medvl.io.read_image`` is not available.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medvl.data.manifest import write_manifest


def write_dicom_2d(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CR",
) -> Path:
    """Write an uncompressed 16-bit unsigned single-frame DICOM image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "anon"
    arr = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter = window[0]
        ds.WindowWidth = window[1]
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Write an 8-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(path)
    return path


def write_nifti(path: Path, volume: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write a NIfTI volume with an RAS+ diagonal affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.int16), affine), str(path))
    return path


def row(study_id: str, image: str, *, patient: str | None = None, split: str = "train",
        labels: dict | None = None, report: dict | None = None, dims: int = 2,
        modality: str = "CR") -> dict:
    """One manifest row as a mapping."""
    return {
        "study_id": study_id, "patient_id": patient or f"p-{study_id}", "split": split,
        "modality": modality, "dims": dims, "image": image,
        "report": report if report is not None else {
            "findings": f"Findings of {study_id}. Lungs are clear.",
            "impression": "No acute disease.",
        },
        "labels": labels or {}, "annotations": [], "view": "PA" if dims == 2 else None, "meta": {},
    }


def make_corpus_2d(root: Path, n: int = 6, *, size=(40, 30)) -> Path:
    """``n`` tiny DICOM radiographs with a manifest; returns the manifest path."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 4000, size=size)
        write_dicom_2d(root / "img" / f"s{i}.dcm", pixels, window=(2000, 4000))
        rows.append(row(f"s{i}", f"img/s{i}.dcm", labels={"cardiomegaly": i % 2}))
    manifest = root / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest


def test_helpers_write_readable_files(tmp_path) -> None:
    """The DICOM helper writes a file pydicom decodes to the same pixels."""
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = write_dicom_2d(tmp_path / "a.dcm", pixels)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def read_for_tests(path):
    """A minimal independent reader (pydicom / nibabel / Pillow) -> ``MedicalImage``."""
    from pydicom.pixels import apply_modality_lut

    from medvl.io.image import MedicalImage

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = nib.as_closest_canonical(nib.load(str(path)))
        arr = np.asarray(img.dataobj, dtype=np.float32)
        return MedicalImage(arr, tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine,
                            "OT", "MONOCHROME2", path=path)
    if name.endswith(".png"):
        arr = np.asarray(Image.open(path), dtype=np.float32)
        return MedicalImage(arr, (1.0, 1.0), None, "OT", "MONOCHROME2", path=path)
    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    windows = []
    if "WindowCenter" in ds:
        windows = [(float(ds.WindowCenter), float(ds.WindowWidth))]
    return MedicalImage(arr, tuple(float(v) for v in ds.PixelSpacing), None, str(ds.Modality),
                        str(ds.PhotometricInterpretation), windows=windows, path=path)


def reader_under_test():
    """``medvl.io.read_image`` once the io room provides it, else :func:`read_for_tests`."""
    try:
        from medvl.io import read_image
    except ImportError:
        return read_for_tests
    return read_image

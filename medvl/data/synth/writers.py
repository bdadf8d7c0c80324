"""File writers of the synthetic corpus: radiograph DICOM, CT NIfTI and DICOM series, masks.

Radiographs are stored the way detectors deliver them: unsigned integers of 12-16
stored bits with a RescaleSlope/Intercept, MONOCHROME1 (high value = dark) or
MONOCHROME2, window presets computed from the body's value range, and sometimes a
compressed transfer syntax. A reader that ignores rescale or photometric
interpretation gets visibly wrong images, which is the point.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Modality output value of one unit of attenuation line integral.
UNITS_PER_ATTENUATION = 1000.0
#: Modality output scale top; MONOCHROME1 stores ``OUTPUT_MAX - 1000 * attenuation``.
OUTPUT_MAX = 4000.0

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_TS = {
    "none": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
}


def seeded_uid(rng: np.random.Generator) -> str:
    """A UUID-derived UID (``2.25.<128-bit integer>``) drawn from ``rng`` (reproducible)."""
    hi, lo = (int(x) for x in rng.integers(0, 2**63, size=2, dtype=np.int64))
    return f"2.25.{(hi << 64) | lo}"


def encoder_available(compression: str) -> bool:
    """Whether pydicom can encode ``compression`` with the installed plugins."""
    if compression == "none":
        return True
    from pydicom.pixels.encoders import (
        JPEG2000LosslessEncoder,
        JPEGLSLosslessEncoder,
        RLELosslessEncoder,
    )

    enc = {"rle": RLELosslessEncoder, "jpeg2000": JPEG2000LosslessEncoder, "jpegls": JPEGLSLosslessEncoder}
    return bool(enc[compression].is_available)


@dataclass
class StoredRadiograph:
    """How a radiograph was stored (recorded in the manifest ``meta``)."""

    photometric: str
    bits_stored: int
    slope: float
    intercept: float
    windows: list[tuple[float, float]]
    transfer_syntax: str


def _study_date(patient_id: str, study_number: int) -> str:
    day = int(patient_id.rsplit("P", 1)[-1]) % 3000
    d = _dt.date(2015, 1, 1) + _dt.timedelta(days=day + 45 * (study_number - 1))
    return d.strftime("%Y%m%d")


def _base_dataset(sop_class: str, ts: str, rng: np.random.Generator, *, patient_id: str, study_number: int,
                  study_uid: str, series_uid: str, modality: str) -> Dataset:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    sop_uid = seeded_uid(rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(_TS["none"])
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_id.replace("-", "^")
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = _study_date(patient_id, study_number)
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(study_number)
    ds.SeriesNumber = 1
    ds.Manufacturer = "medvl synthetic phantom"
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    return ds


def _windows(output: np.ndarray, body: np.ndarray) -> list[tuple[float, float]]:
    # Every 4th row and column is plenty for percentiles and four times cheaper.
    output, body = output[::4, ::4], body[::4, ::4]
    vals = output[body] if body.any() else output.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5])
    wide = (float(round((lo + hi) / 2)), float(round(max(hi - lo, 10.0))))
    narrow = (wide[0], float(round(max(wide[1] * 0.6, 10.0))))
    return [wide, narrow]


def write_radiograph(
    path: Path,
    attenuation: np.ndarray,
    rng: np.random.Generator,
    *,
    patient_id: str,
    study_number: int,
    modality: str,
    view: str | None,
    spacing: float,
    compression: str,
) -> StoredRadiograph:
    """Write a CR/DX DICOM file from an attenuation image.

    The stored integers, rescale and photometric interpretation are drawn from
    ``rng``; after pydicom's ``apply_modality_lut`` a reader recovers
    ``1000 * attenuation`` (MONOCHROME2) or ``4000 - 1000 * attenuation`` (MONOCHROME1)
    to within half a rescale step.
    """
    photometric = "MONOCHROME1" if rng.random() < 0.4 else "MONOCHROME2"
    bits = int(rng.choice([12, 14, 15, 16]))
    att = np.clip(attenuation, 0.0, OUTPUT_MAX / UNITS_PER_ATTENUATION)
    output = UNITS_PER_ATTENUATION * att
    if photometric == "MONOCHROME1":
        output = OUTPUT_MAX - output
    top = 2**bits - 1
    options = [(s, b) for s in (0.25, 0.5, 1.0, 2.0) for b in (0.0, -1024.0, -500.0)
               if (OUTPUT_MAX - b) / s <= top]
    slope, intercept = options[int(rng.integers(len(options)))]
    stored = np.clip(np.rint((output - intercept) / slope), 0, top).astype(np.uint16)
    windows = _windows(output, attenuation > 0.3)
    study_uid, series_uid = seeded_uid(rng), seeded_uid(rng)
    sop_class = DX_STORAGE if modality == "DX" else CR_STORAGE
    ds = _base_dataset(sop_class, _TS["none"], rng, patient_id=patient_id, study_number=study_number,
                       study_uid=study_uid, series_uid=series_uid, modality=modality)
    ds.InstanceNumber = 1
    ds.ViewPosition = view or ""
    ds.StudyDescription = f"CHEST {view or ''}".strip()
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    # Acquisition: bedside AP films are shot closer and softer than PA films in the department.
    ds.KVP = 90 if view == "AP" else 120
    ds.DistanceSourceToDetector = 1000 if view == "AP" else 1800
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    if modality == "DX":
        # DX IOD: the presentation LUT shape follows the photometric interpretation, and
        # stored values are log exposure (sign: +1 when higher means more attenuation).
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME1" else 1
    ds.ImagerPixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.Rows, ds.Columns = stored.shape
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "US"
    ds.WindowCenter = [w[0] for w in windows]
    ds.WindowWidth = [w[1] for w in windows]
    ds.WindowCenterWidthExplanation = ["WIDE", "NARROW"]
    # Some detectors ask for a sigmoid VOI function (PS3.3 C.11.2.1.3.1).
    ds.VOILUTFunction = "SIGMOID" if rng.random() < 0.15 else "LINEAR"
    ds.PixelData = stored.tobytes()
    ts = _TS["none"]
    if compression != "none" and encoder_available(compression):
        try:
            ds.compress(_TS[compression], stored, generate_instance_uid=False)
            ts = _TS[compression]
        except Exception:  # noqa: BLE001 - an encoder failure falls back to uncompressed
            from pydicom.uid import UID

            ds.PixelData = stored.tobytes()
            ds.file_meta.TransferSyntaxUID = UID(_TS["none"])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return StoredRadiograph(photometric, bits, slope, intercept, windows, ts)


def write_png_mask(path: Path, mask: np.ndarray) -> None:
    """A binary mask as an 8-bit PNG (0 / 255), same rows and columns as the image."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask.astype(np.uint8) * 255), mode="L").save(path, format="PNG")


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a RAS+ array as NIfTI-1 with both qform and sform set (code 1, scanner)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def reorient_for_storage(array: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """Flip a RAS+ array (and its affine) to ``LPS`` storage order, as many scanners' NIfTI are.

    The world coordinates of every voxel are unchanged; only the index order differs,
    so ``nibabel.as_closest_canonical`` gives back the RAS array.
    """
    if orientation == "RAS":
        return array, affine
    if orientation != "LPS":
        raise ValueError(f"unknown orientation {orientation!r}")
    flipped = np.ascontiguousarray(array[::-1, ::-1, :])
    new = affine.copy()
    for d in (0, 1):
        new[:3, 3] += affine[:3, d] * (array.shape[d] - 1)
        new[:3, d] = -affine[:3, d]
    return flipped, new


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    patient_id: str,
    study_number: int,
) -> dict[str, object]:
    """Write a RAS+ HU volume as an axial CT DICOM series, one file per slice.

    Files get random names, so directory order says nothing about slice order; a
    reader must sort by ImagePositionPatient along the slice normal.
    """
    nx, ny, nz = hu.shape
    sx, sy, sz = float(affine[0, 0]), float(affine[1, 1]), float(affine[2, 2])
    ox, oy, oz = (float(v) for v in affine[:3, 3])
    signed = bool(rng.random() < 0.5)
    intercept = 0.0 if signed else -1024.0
    study_uid, series_uid, frame_uid = seeded_uid(rng), seeded_uid(rng), seeded_uid(rng)
    names = [f"{int(v):016x}.dcm" for v in np.asarray(rng.integers(0, 2**62, size=nz, dtype=np.int64))]
    # Scanners number slices from the head or from the feet; neither is the file order.
    from_top = bool(rng.random() < 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    # LPS of voxel (nx-1, ny-1, k): the first transmitted pixel of each slice.
    x0, y0 = -(ox + (nx - 1) * sx), -(oy + (ny - 1) * sy)
    for k in range(nz):
        # pixel[r, c] = hu[nx-1-c, ny-1-r, k]: columns run to patient left (+x LPS), rows posterior.
        sl = np.ascontiguousarray(hu[::-1, ::-1, k].T)
        stored_f = np.rint(sl) - intercept  # round HU first so NIfTI and DICOM agree exactly
        if signed:
            stored = np.clip(stored_f, -32768, 32767).astype(np.int16)
        else:
            stored = np.clip(stored_f, 0, 4095).astype(np.uint16)
        ds = _base_dataset(CT_STORAGE, _TS["none"], rng, patient_id=patient_id, study_number=study_number,
                           study_uid=study_uid, series_uid=series_uid, modality="CT")
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = nz - k if from_top else k + 1
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(oz + k * sz, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(sy, 6), round(sx, 6)]  # row spacing (y), column spacing (x)
        ds.SliceThickness = round(sz, 6)
        ds.SliceLocation = round(oz + k * sz, 4)
        ds.Rows, ds.Columns = stored.shape
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored = 16 if signed else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = 1
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
        ds.WindowCenter = [-600, 40]
        ds.WindowWidth = [1500, 400]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return {"pixel_representation": int(signed), "rescale_intercept": intercept, "n_files": nz,
            "instance_order": "head_first" if from_top else "feet_first"}

"""Writers of miniature corpus trees with each provider's real layout, file names,
CSV headers and XML structure, for tests and for the ``prepare`` speed benchmark.

Images are written as real (tiny) DICOM/PNG/NIfTI files when ``real_images`` is
True, else as empty placeholder files (enough for manifest preparation).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]

REPORT_TEXT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:

 There is a small {side} pleural effusion. The cardiomediastinal silhouette is
 normal. No pneumothorax.

 IMPRESSION:

 Small {side} pleural effusion.
"""


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    if gz:
        with gzip.open(path, "wb", compresslevel=1) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _tiny_dicom(path: Path, modality: str = "CR", seed: int = 0) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    CRImageStorage = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CRImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "ANON"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = np.random.default_rng(seed).integers(0, 4095, (16, 16), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _touch(path: Path, real: bool, kind: str, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not real:
        path.touch()
    elif kind == "dcm":
        _tiny_dicom(path, seed=seed)
    elif kind == "png" or kind == "jpg":
        from PIL import Image

        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(
            path, format="PNG" if kind == "png" else "JPEG")
    elif kind == "nii":
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([0.8, 0.8, 2.0, 1.0])), str(path))


def write_mimic_tree(root: Path, n_patients: int = 4, studies_per_patient: int = 2, images_per_study: int = 2,
                     jpg: bool = False, real_images: bool = True, reports: bool = True, gz: bool = True) -> Path:
    """MIMIC-CXR(-JPG) layout: metadata, split and CheXpert CSVs (gzipped) and the files/ tree."""
    root.mkdir(parents=True, exist_ok=True)
    meta, split, labels = [], [], []
    rng = np.random.default_rng(0)
    splits = ["train", "validate", "test"]
    for p in range(n_patients):
        subject = f"{10000000 + p}"
        sp = splits[p % 3] if n_patients >= 3 else "train"
        for s in range(studies_per_patient):
            study = f"{50000000 + p * 100 + s}"
            sdir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            if reports:
                sdir.parent.mkdir(parents=True, exist_ok=True)
                sdir.with_suffix(".txt").write_text(REPORT_TEXT.format(side="left" if s % 2 else "right"))
            for i in range(images_per_study):
                dicom_id = f"{p:08x}-{s:08x}-{i:08x}-0000abcd-ef012345"
                view = ["PA", "LATERAL", "AP"][i % 3]
                meta.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, 16, 16, 21800101, 120000.0,
                             "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
                split.append([dicom_id, study, subject, sp])
                _touch(sdir / f"{dicom_id}.{'jpg' if jpg else 'dcm'}", real_images, "jpg" if jpg else "dcm", seed=p + s + i)
            cells = ["" if rng.random() < 0.5 else str(rng.choice([1.0, 0.0, -1.0])) for _ in CHEXPERT_LABELS]
            cells[CHEXPERT_LABELS.index("Pleural Effusion")] = "1.0"
            labels.append([subject, study, *cells])
    sfx = ".csv.gz" if gz else ".csv"
    _write_csv(root / f"mimic-cxr-2.0.0-metadata{sfx}",
               ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"], meta, gz)
    _write_csv(root / f"mimic-cxr-2.0.0-split{sfx}", ["dicom_id", "study_id", "subject_id", "split"], split, gz)
    _write_csv(root / f"mimic-cxr-2.0.0-chexpert{sfx}", ["subject_id", "study_id", *CHEXPERT_LABELS], labels, gz)
    return root


def write_chexpert_tree(root: Path, n_patients: int = 30, small: bool = True, real_images: bool = True) -> Path:
    """CheXpert layout: train.csv / valid.csv with Path relative to the release's parent."""
    release = "CheXpert-v1.0-small" if small else "CheXpert-v1.0"
    rng = np.random.default_rng(1)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    for csv_name, folder, n, first in (("train.csv", "train", n_patients, 0),
                                       ("valid.csv", "valid", max(2, n_patients // 5), 64540)):
        rows = []
        for p in range(first, first + n):
            for view, fl in (("frontal", "Frontal"), ("lateral", "Lateral")):
                rel = f"{release}/{folder}/patient{p + 1:05d}/study1/view{1 if fl == 'Frontal' else 2}_{view}.jpg"
                _touch(root / rel, real_images, "jpg", seed=p)
                cells = [""] * len(CHEXPERT_LABELS)
                five = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
                cls = five[p % 5]
                cells[CHEXPERT_LABELS.index(cls)] = "1.0"
                if p % 7 == 0:  # some rows positive for two of the five: not "exclusively positive"
                    cells[CHEXPERT_LABELS.index(five[(p + 1) % 5])] = "1.0"
                if p % 4 == 0:
                    cells[CHEXPERT_LABELS.index("Support Devices")] = "-1.0"
                rows.append([rel, "Female", int(rng.integers(20, 90)), fl, "PA" if fl == "Frontal" else "", *cells])
        _write_csv(root / release / csv_name, header, rows)
    return root


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="CXR{n}"/>
  <pmcId id="{n}"/>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">XXXX-year-old with chest pain.</AbstractText>
        <AbstractText Label="FINDINGS">{findings}</AbstractText>
        <AbstractText Label="IMPRESSION">{impression}</AbstractText>
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH>
{mesh}
  </MeSH>
{images}
</eCitation>
"""


def write_openi_tree(root: Path, n_reports: int = 10, real_images: bool = True) -> Path:
    """Open-I layout: ecgen-radiology/N.xml and a PNG folder."""
    cases = [
        ("Heart size is enlarged. Lungs are clear.", "Cardiomegaly.", ["Cardiomegaly/mild"]),
        ("The lungs are clear. No pleural effusion or pneumothorax.", "No acute disease.", ["normal"]),
        ("Blunting of the right costophrenic angle.", "Right pleural effusion.", ["Pleural Effusion/right/small"]),
        ("Nodular density in the left upper lobe.", "Left upper lobe nodule.", ["Nodule/lung/upper lobe/left", "Granuloma"]),
    ]
    (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
    for n in range(1, n_reports + 1):
        findings, impression, mesh = cases[n % len(cases)]
        ids = [f"CXR{n}_IM-{n:04d}-{1000 + k}" for k in range(2)]
        xml = OPENI_XML.format(
            n=n, findings=findings, impression=impression,
            mesh="\n".join(f"    <major>{m}</major>" for m in mesh),
            images="\n".join(f'  <parentImage id="{i}"><figureId>F{k + 1}</figureId></parentImage>' for k, i in enumerate(ids)),
        )
        (root / "ecgen-radiology" / f"{n}.xml").write_text(xml)
        for i in ids[: 1 if n % 5 == 0 else 2]:  # some images missing, as in the real collection
            _touch(root / "NLMCXR_png" / f"{i}.png", real_images, "png", seed=n)
    return root


CT_RATE_LABELS = [
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern",
    "Peribronchial thickening", "Consolidation", "Bronchiectasis", "Interlobular septal thickening",
]


def write_ct_rate_tree(root: Path, n_train: int = 6, n_valid: int = 2, real_images: bool = True) -> Path:
    """CT-RATE layout: dataset/{train,valid}/..., reports and multi-abnormality label CSVs."""
    base = root / "dataset"
    for which, n, rep_name in (("train", n_train, "train_reports.csv"), ("valid", n_valid, "validation_reports.csv")):
        reports, labels = [], []
        for p in range(1, n + 1):
            for scan in ("a",):
                for recon in (1, 2):
                    name = f"{which}_{p}_{scan}_{recon}.nii.gz"
                    _touch(base / which / f"{which}_{p}" / f"{which}_{p}_{scan}" / name, real_images, "nii")
                    reports.append([name, "Cough.", "Non-contrast chest CT.",
                                    f"A {4 + p} mm nodule in the right upper lobe. No pleural effusion.",
                                    "Right upper lobe nodule."])
                    labels.append([name, *[int(lbl == "Lung nodule") for lbl in CT_RATE_LABELS]])
        _write_csv(base / "radiology_text_reports" / rep_name,
                   ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"], reports)
        _write_csv(base / "multi_abnormality_labels" / f"{which}_predicted_labels.csv", ["VolumeName", *CT_RATE_LABELS], labels)
    return root


def siim_rle_encode(mask: np.ndarray) -> str:
    """Encode a (H, W) mask in SIIM's relative column-major run-length code (inverse of the decoder)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    out, prev = [], 0
    for s, e in zip(starts, ends, strict=True):
        out += [int(s - prev), int(e - s)]
        prev = e
    return " ".join(map(str, out)) if out else "-1"


def write_rsna_tree(root: Path, n: int = 6, real_images: bool = True) -> Path:
    rows = []
    for i in range(n):
        pid = f"{i:08x}-rsna-0000-0000-000000000000"
        _touch(root / "stage_2_train_images" / f"{pid}.dcm", real_images, "dcm", seed=i)
        if i % 2:
            rows.append([pid, 100 + i, 200, 50, 80, 1])
            rows.append([pid, 600, 220, 60, 90, 1])
        else:
            rows.append([pid, "", "", "", "", 0])
    _write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    return root


def write_siim_tree(root: Path, n: int = 4, real_images: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """SIIM layout; returns the root and the ground-truth masks by ImageId."""
    truth = {}
    rows = []
    for i in range(n):
        iid = f"1.2.276.0.7230010.3.1.4.{i}"
        _touch(root / "dicom-images-train" / f"1.2.3.{i}" / f"1.2.3.{i}.1" / f"{iid}.dcm", real_images, "dcm", seed=i)
        mask = np.zeros((1024, 1024), np.uint8)
        if i % 2:
            mask[100 + i : 300, 50:90] = 1
            mask[500:520, 700:760] = 1
            rows.append([iid, siim_rle_encode(mask)])
        else:
            rows.append([iid, "-1"])
        truth[iid] = mask
    # SIIM's header really has a space before EncodedPixels
    (root).mkdir(parents=True, exist_ok=True)
    with (root / "train-rle.csv").open("w") as fh:
        fh.write("ImageId, EncodedPixels\n")
        for iid, code in rows:
            fh.write(f"{iid}, {code}\n")
    return root, truth

"""MIMIC-CXR (DICOM, v2.0.0/2.1.0) and MIMIC-CXR-JPG (v2.0.0/2.1.0) from PhysioNet.

Expected layout (the two may share one root, as many users unpack them together)::

    ROOT/
      mimic-cxr-2.0.0-metadata.csv(.gz)    dicom_id, subject_id, study_id, ViewPosition, ...
      mimic-cxr-2.0.0-split.csv(.gz)       dicom_id, study_id, subject_id, split
      mimic-cxr-2.0.0-chexpert.csv(.gz)    subject_id, study_id, <14 CheXpert labels>
      files/p10/p10000032/s50414267.txt    the free-text report of study 50414267
      files/p10/p10000032/s50414267/<dicom_id>.dcm | .jpg

Reports come from the study text files (``mimic-cxr-reports.zip`` of MIMIC-CXR,
unpacked under ``files/``); FINDINGS and IMPRESSION are extracted. One manifest row
per image (``dicom_id``), frontal views (PA, AP) by default. The official split
(``validate`` is mapped to ``val``) is used as is: it is patient-level.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medvl.data.manifest import ManifestRow
from medvl.recipes.base import RECIPES, Recipe, map_label_name, parse_label, read_table

SPLIT_MAP = {"train": "train", "validate": "val", "test": "test"}
NON_LABEL = {"subject_id", "study_id"}


def _find(root: Path, stem: str) -> Path:
    for suffix in (".csv.gz", ".csv"):
        p = root / f"{stem}{suffix}"
        if p.exists():
            return p
    return root / f"{stem}.csv.gz"


def _study_dir(root: Path, subject_id: str, study_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


class MimicCXR(Recipe):
    """MIMIC-CXR with DICOM images."""

    name = "mimic-cxr"
    description = "MIMIC-CXR v2 (DICOM) with reports, official split and CheXpert labels"
    image_suffix = ".dcm"

    def rows(self) -> Iterator[ManifestRow]:
        from medvl.data.reports import extract_sections

        root = self.root
        self.expect("files", "the files/pXX/pSUBJECT/sSTUDY tree")
        meta_path = _find(root, "mimic-cxr-2.0.0-metadata")
        split_path = _find(root, "mimic-cxr-2.0.0-split")
        label_path = _find(root, "mimic-cxr-2.0.0-chexpert")

        split = {
            r["dicom_id"]: r["split"]
            for r in read_table(split_path, ["dicom_id", "study_id", "subject_id", "split"])
        }
        labels: dict[str, dict[str, int]] = {}
        if label_path.exists():
            for r in read_table(label_path, ["subject_id", "study_id"]):
                parsed = {
                    map_label_name(k): parse_label(v, self.options.uncertain)
                    for k, v in r.items() if k not in NON_LABEL
                }
                labels[r["study_id"]] = {k: v for k, v in parsed.items() if v is not None}

        views = set(self.options.views) if self.options.views else None
        reports: dict[str, dict[str, str]] = {}
        for r in read_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
            view = (r["ViewPosition"] or "").strip() or None
            if views is not None and view not in views:
                continue
            dicom_id, subject, study = r["dicom_id"], r["subject_id"], r["study_id"]
            if dicom_id not in split:
                continue
            sdir = _study_dir(root, subject, study)
            if study not in reports:
                txt = sdir.with_suffix(".txt")
                reports[study] = extract_sections(txt.read_text(encoding="utf-8", errors="replace")) if txt.exists() else {}
            report = {k: v for k, v in reports[study].items() if k in ("findings", "impression") and v}
            yield ManifestRow(
                study_id=f"mimic-{dicom_id}",
                patient_id=f"mimic-p{subject}",
                split=SPLIT_MAP.get(split[dicom_id], "train"),
                modality="DX",
                dims=2,
                image=self.image_ref(sdir / f"{dicom_id}{self.image_suffix}"),
                report=report,
                labels=dict(labels.get(study, {})),
                view=view,
                meta=self.meta(corpus=self.name, mimic_study_id=study),
            )


class MimicCXRJPG(MimicCXR):
    """MIMIC-CXR-JPG: the same tables, JPEG images."""

    name = "mimic-cxr-jpg"
    description = "MIMIC-CXR-JPG v2 with reports from MIMIC-CXR, official split and CheXpert labels"
    image_suffix = ".jpg"


RECIPES.add(MimicCXR.name, MimicCXR)
RECIPES.add(MimicCXRJPG.name, MimicCXRJPG)

"""CT-RATE (chest CT volumes with reports, Hamamci et al.).

Expected layout, as distributed on its dataset page::

    ROOT/
      dataset/train/train_1/train_1_a/train_1_a_1.nii.gz
      dataset/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz
      dataset/radiology_text_reports/train_reports.csv     VolumeName, ClinicalInformation_EN,
      dataset/radiology_text_reports/validation_reports.csv   Technique_EN, Findings_EN, Impressions_EN
      dataset/multi_abnormality_labels/train_predicted_labels.csv   VolumeName, <18 abnormalities>
      dataset/multi_abnormality_labels/valid_predicted_labels.csv

``train_<patient>_<scan>_<reconstruction>.nii.gz``: the number after ``train_`` /
``valid_`` is the patient. The official train/valid split is kept (valid -> test);
10% of training patients (by hash) become ``val``. Label columns map onto the medvl
vocabulary where they coincide (``Lung nodule`` -> nodule, ``Medical material`` ->
support_device, ...); the rest are kept under their snake_case names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medvl.data.manifest import ManifestRow
from medvl.recipes.base import RECIPES, Recipe, map_label_name, parse_label, patient_split, read_table

REPORT_COLUMNS = ["VolumeName", "Findings_EN", "Impressions_EN"]


def volume_path(base: Path, name: str) -> Path:
    """``train_1_a_1.nii.gz`` -> ``base/train/train_1/train_1_a/train_1_a_1.nii.gz``."""
    stem = name.split(".nii")[0]
    split, patient, scan = stem.split("_")[:3]
    folder = "train" if split == "train" else "valid"
    return base / folder / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / name


class CTRate(Recipe):
    name = "ct-rate"
    description = "CT-RATE chest CT (NIfTI) with reports and multi-abnormality labels"

    def _split(self, base: Path, which: str) -> Iterator[ManifestRow]:
        rep_name = "train_reports.csv" if which == "train" else "validation_reports.csv"
        lab_name = f"{which}_predicted_labels.csv"
        labels: dict[str, dict[str, int]] = {}
        lab_path = base / "multi_abnormality_labels" / lab_name
        if lab_path.exists():
            for r in read_table(lab_path, ["VolumeName"]):
                labels[r["VolumeName"]] = {
                    map_label_name(k): v for k, cell in r.items() if k != "VolumeName"
                    for v in [parse_label(cell)] if v is not None
                }
        for r in read_table(base / "radiology_text_reports" / rep_name, REPORT_COLUMNS):
            name = r["VolumeName"].strip()
            try:
                path = volume_path(base, name)
            except ValueError:
                from medvl.errors import DatasetRecipeError

                raise DatasetRecipeError(
                    f"unexpected VolumeName {name!r}", path=base / "radiology_text_reports" / rep_name,
                    field="VolumeName", expected="train_<patient>_<scan>_<recon>.nii.gz",
                ) from None
            patient = f"ctrate-{name.split('_')[0]}_{name.split('_')[1]}"
            if which == "train":
                split = patient_split(patient, (0.9, 0.1, 0.0))
            else:
                split = "test"
            report = {
                k: " ".join((r.get(col) or "").split())
                for k, col in (("findings", "Findings_EN"), ("impression", "Impressions_EN"))
                if (r.get(col) or "").strip()
            }
            yield ManifestRow(
                study_id=f"ctrate-{name.split('.nii')[0]}",
                patient_id=patient,
                split=split,
                modality="CT",
                dims=3,
                image=self.image_ref(path),
                report=report,
                labels=dict(labels.get(name, {})),
                view=None,
                meta=self.meta(corpus=self.name),
            )

    def rows(self) -> Iterator[ManifestRow]:
        base = self.expect("dataset/radiology_text_reports", "dataset/radiology_text_reports/*.csv")
        base = base.parent
        yield from self._split(base, "train")
        if (base / "radiology_text_reports" / "validation_reports.csv").exists():
            yield from self._split(base, "valid")


RECIPES.add(CTRate.name, CTRate)

"""CheXpert (Stanford ML Group) and the CheXpert 5x200 zero-shot subset.

Expected layout (the full or the downsampled "small" release)::

    ROOT/
      CheXpert-v1.0[-small]/train.csv     Path, Sex, Age, Frontal/Lateral, AP/PA, <14 labels>
      CheXpert-v1.0[-small]/valid.csv
      CheXpert-v1.0[-small]/train/patient00001/study1/view1_frontal.jpg

``Path`` values start with the release folder name and are resolved against ROOT.
CheXpert ships no report text, so rows carry an empty ``report`` and
``meta.has_report = false``: the manifest serves zero-shot classification and
linear probes, not contrastive training.

Uncertain labels (-1) follow the chosen policy: ``keep``, ``ones`` (U-Ones),
``zeros`` (U-Zeros) or ``ignore``.

Splits: ``valid.csv`` is the official validation set (radiologist consensus) and
becomes ``test``; ``train.csv`` is split by patient into train/val (90/10).

**CheXpert 5x200** (``--subset chexpert5x200``), as constructed for GLoRIA's zero-shot
evaluation: 200 images for each of Atelectasis, Cardiomegaly, Consolidation, Edema and
Pleural Effusion, drawn from the training CSV among frontal images that are positive
for that finding and for none of the other four ("exclusively positive"; uncertain
counts as not positive). Sampling is seeded; every selected row goes to ``test`` and
its label is the single class (multi-class accuracy protocol).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from medvl.data.manifest import ManifestRow
from medvl.recipes.base import RECIPES, Recipe, map_label_name, parse_label, patient_split, read_table

LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
REQUIRED = ["Path", "Frontal/Lateral", "AP/PA", *LABELS]


class CheXpert(Recipe):
    name = "chexpert"
    description = "CheXpert v1.0 (images + labels, no reports); --subset chexpert5x200"

    def _release(self) -> str:
        for name in ("CheXpert-v1.0", "CheXpert-v1.0-small"):
            if (self.root / name / "train.csv").exists():
                return name
        self.expect("CheXpert-v1.0/train.csv", "CheXpert-v1.0/ or CheXpert-v1.0-small/ with train.csv and valid.csv")
        raise AssertionError("unreachable")

    def _row(self, r: dict[str, str], split: str, labels: dict[str, int]) -> ManifestRow:
        path = r["Path"]
        parts = path.split("/")
        patient = next((p for p in parts if p.startswith("patient")), parts[-3] if len(parts) >= 3 else path)
        study = "/".join(parts[-4:]).rsplit(".", 1)[0]  # train|valid/patient/study/view
        view = (r.get("AP/PA") or "").strip() or ("LL" if r.get("Frontal/Lateral") == "Lateral" else None)
        return ManifestRow(
            study_id=f"chexpert-{study.replace('/', '-')}",
            patient_id=f"chexpert-{patient}",
            split=split,
            modality="DX",
            dims=2,
            image=self.image_ref(self.root / path),
            report={},
            labels=labels,
            view=view,
            meta=self.meta(corpus=self.name, has_report=False, csv=parts[1] if len(parts) > 1 else None),
        )

    def _labels(self, r: dict[str, str]) -> dict[str, int]:
        out = {}
        for name in LABELS:
            v = parse_label(r.get(name), self.options.uncertain)
            if v is not None:
                out[map_label_name(name)] = v
        return out

    def _frontal_ok(self, r: dict[str, str]) -> bool:
        views = self.options.views
        if views is None:
            return True
        if r["Frontal/Lateral"] != "Frontal":
            return False
        return (r.get("AP/PA") or "").strip() in views or not (r.get("AP/PA") or "").strip()

    def rows(self) -> Iterator[ManifestRow]:
        release = self._release()
        base = self.root / release
        if self.options.subset == "chexpert5x200":
            yield from self._five_by_200(base)
            return
        if self.options.subset not in (None, ""):
            from medvl.errors import DatasetRecipeError

            raise DatasetRecipeError(f"unknown subset {self.options.subset!r}", field="subset", expected="chexpert5x200")
        for r in read_table(base / "train.csv", REQUIRED):
            if self._frontal_ok(r):
                row = self._row(r, "train", self._labels(r))
                row.split = patient_split(row.patient_id, (0.9, 0.1, 0.0))
                yield row
        for r in read_table(base / "valid.csv", REQUIRED):
            if self._frontal_ok(r):
                yield self._row(r, "test", self._labels(r))

    def _five_by_200(self, base) -> Iterator[ManifestRow]:
        pools: dict[str, list[dict[str, str]]] = {c: [] for c in FIVE}
        for r in read_table(base / "train.csv", REQUIRED):
            if r["Frontal/Lateral"] != "Frontal":
                continue
            pos = [c for c in FIVE if parse_label(r.get(c), "zeros") == 1]
            if len(pos) == 1:
                pools[pos[0]].append(r)
        rng = random.Random(self.options.seed)
        for cls in FIVE:
            pool = pools[cls]
            chosen = rng.sample(pool, min(200, len(pool)))
            for r in chosen:
                labels = {map_label_name(c): int(c == cls) for c in FIVE}
                row = self._row(r, "test", labels)
                row.meta["five_by_200_class"] = map_label_name(cls)
                yield row


RECIPES.add(CheXpert.name, CheXpert)

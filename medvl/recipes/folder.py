"""A folder of your own: DICOM or NIfTI files plus a CSV of report text.

The easiest path for a hospital's own (de-identified) data::

    ROOT/
      reports.csv                   one row per study (name set with --csv)
      images/...                    DICOM files, DICOM series folders, NIfTI, PNG/JPEG

``reports.csv`` columns:

===============  =========  ==================================================
column           required   meaning
===============  =========  ==================================================
``image``        yes        path relative to ROOT: a file or a series folder
``report``       one of     the whole report (FINDINGS/IMPRESSION extracted)
``findings``,    these      or the sections as separate columns
``impression``
``patient_id``   advised    pseudonymous patient id; without it each study is
                            its own patient (a warning says so), with the id
                            ``p-`` + a hash of the image path (not the path:
                            file and folder names may carry patient names)
``study_id``     no         default: ``s-`` + the same hash
``split``        no         train / val / test; default: by patient hash 80/10/10
``modality``     no         default: the DICOM Modality tag; ``OT`` for NIfTI/PNG
``view``         no         view position for radiographs
other columns    no         labels: cells 1, 0, -1 or blank
===============  =========  ==================================================
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from medvl.data.manifest import SPLITS, ManifestRow
from medvl.errors import DatasetRecipeError
from medvl.recipes.base import RECIPES, Recipe, map_label_name, patient_split, read_table

KNOWN = {"image", "report", "findings", "impression", "patient_id", "study_id", "split", "modality", "view"}
VOLUME_SUFFIXES = (".nii", ".nii.gz")


def _dicom_modality(path: Path) -> tuple[str, int]:
    """Modality and number of frames from a DICOM header, without reading pixels."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "NumberOfFrames"])
    return str(ds.get("Modality", "OT") or "OT"), int(ds.get("NumberOfFrames", 1) or 1)


class OwnFolder(Recipe):
    name = "folder"
    description = "your own DICOM/NIfTI files plus a CSV of report text"

    def rows(self) -> Iterator[ManifestRow]:
        from medvl.data.reports import extract_sections

        table = self.root / self.options.csv_name
        warned = False
        seen: set[str] = set()
        for lineno, r in enumerate(read_table(table, ["image"]), 2):
            where = f"{table}:{lineno}"
            rel = (r.get("image") or "").strip()
            if not rel:
                raise DatasetRecipeError("empty image path", path=where, field="image")
            path = self.root / rel
            if not path.exists():
                raise DatasetRecipeError(f"image {rel!r} not found under the root", path=where, field="image")
            if (r.get("findings") or r.get("impression")):
                report = {k: r[k].strip() for k in ("findings", "impression") if (r.get(k) or "").strip()}
            elif (r.get("report") or "").strip():
                report = extract_sections(r["report"])
            else:
                raise DatasetRecipeError("empty report", path=where, field="report",
                                         expected="text in 'report' or 'findings'/'impression'")
            patient = (r.get("patient_id") or "").strip()
            # Never the path itself: folder and file names often carry the patient's name.
            key = hashlib.sha256(Path(rel).as_posix().encode("utf-8")).hexdigest()[:16]
            study = (r.get("study_id") or "").strip() or f"s-{key}"
            if not patient:
                patient = f"p-{key}"
                if not warned:
                    warnings.warn(f"{table}: no patient_id column values; each study is its own patient, "
                                  "so splits cannot keep a patient's studies together", stacklevel=2)
                    warned = True
            if study in seen:
                raise DatasetRecipeError(f"duplicate study {study!r}", path=where, field="study_id")
            seen.add(study)
            split = (r.get("split") or "").strip() or patient_split(patient)
            if split not in SPLITS:
                raise DatasetRecipeError(f"split {split!r}", path=where, field="split", expected=" | ".join(SPLITS))
            modality = (r.get("modality") or "").strip()
            if path.is_dir() or rel.lower().endswith(VOLUME_SUFFIXES):
                dims = 3
            elif rel.lower().endswith((".png", ".jpg", ".jpeg")):
                dims = 2
            else:
                try:
                    mod, frames = _dicom_modality(path)
                except Exception as exc:  # noqa: BLE001 - any unreadable header is a user data problem
                    raise DatasetRecipeError(f"not a readable DICOM file ({type(exc).__name__})", path=path) from None
                modality = modality or mod
                dims = 3 if frames > 1 else 2
            if path.is_dir() and not modality:
                first = next((p for p in sorted(path.iterdir()) if p.is_file()), None)
                if first is not None:
                    try:
                        modality = _dicom_modality(first)[0]
                    except Exception:  # noqa: BLE001
                        modality = ""
            labels = {}
            for k, v in r.items():
                if k in KNOWN or k is None:
                    continue
                cell = (v or "").strip()
                if cell == "":
                    continue
                try:
                    val = int(float(cell))
                except ValueError:
                    raise DatasetRecipeError(f"label value {cell!r}", path=where, field=k, expected="1, 0, -1 or blank") from None
                if val not in (-1, 0, 1):
                    raise DatasetRecipeError(f"label value {cell!r}", path=where, field=k, expected="1, 0, -1 or blank")
                labels[map_label_name(k)] = val
            yield ManifestRow(
                study_id=study, patient_id=patient, split=split, modality=modality or "OT", dims=dims,
                image=self.image_ref(path), report=report, labels=labels,
                view=(r.get("view") or "").strip() or None, meta=self.meta(corpus=self.name),
            )


RECIPES.add(OwnFolder.name, OwnFolder)

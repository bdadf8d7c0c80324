"""Grounding and probe corpora without reports: RSNA Pneumonia and SIIM-ACR Pneumothorax.

**RSNA Pneumonia Detection Challenge** (Kaggle, RSNA/NIH)::

    ROOT/stage_2_train_labels.csv       patientId, x, y, width, height, Target
    ROOT/stage_2_train_images/<patientId>.dcm

One row per image; ``pneumonia`` = Target; each box becomes an annotation
``[x0, y0, x1, y1]`` in pixel (column, row) coordinates.

**SIIM-ACR Pneumothorax Segmentation** (Kaggle)::

    ROOT/train-rle.csv                  ImageId, EncodedPixels   ("-1" = no pneumothorax)
    ROOT/dicom-images-train/<study>/<series>/<ImageId>.dcm

EncodedPixels is SIIM's *relative* run-length code on the 1024x1024 image in
column-major order: pairs (offset from the end of the previous run, length). Masks are
decoded once and written as PNG next to the manifest (``masks/siim/<ImageId>.png``);
several rows for one image are merged. Splits for both are patient-level by hash;
both have empty reports (``meta.has_report = false``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from medvl.data.manifest import ManifestRow
from medvl.errors import DatasetRecipeError
from medvl.recipes.base import RECIPES, Recipe, patient_split, read_table, relpath


class RSNAPneumonia(Recipe):
    name = "rsna-pneumonia"
    description = "RSNA Pneumonia Detection (DICOM + boxes), for grounding and probes"

    def rows(self) -> Iterator[ManifestRow]:
        images = self.expect("stage_2_train_images", "stage_2_train_images/<patientId>.dcm")
        table = self.root / "stage_2_train_labels.csv"
        boxes: dict[str, list[list[float]]] = defaultdict(list)
        target: dict[str, int] = {}
        for r in read_table(table, ["patientId", "x", "y", "width", "height", "Target"]):
            pid = r["patientId"]
            try:
                t = int(float(r["Target"]))
            except ValueError:
                raise DatasetRecipeError(f"Target {r['Target']!r}", path=table, field="Target", expected="0 or 1") from None
            target[pid] = max(target.get(pid, 0), t)
            if t == 1 and r["x"]:
                x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
                boxes[pid].append([x, y, x + w, y + h])
        for pid, t in target.items():
            yield ManifestRow(
                study_id=f"rsna-{pid}", patient_id=f"rsna-{pid}", split=patient_split(pid),
                modality="CR", dims=2, image=self.image_ref(images / f"{pid}.dcm"), report={},
                labels={"pneumonia": t},
                annotations=[{"finding": "pneumonia", "box": b} for b in boxes.get(pid, [])],
                view=None, meta=self.meta(corpus=self.name, has_report=False),
            )


def decode_siim_rle(code: str, width: int = 1024, height: int = 1024) -> np.ndarray:
    """Decode SIIM's relative, column-major run-length code into a (height, width) uint8 mask."""
    flat = np.zeros(width * height, dtype=np.uint8)
    values = [int(v) for v in code.split()]
    if len(values) % 2:
        raise ValueError("odd number of run-length values")
    pos = 0
    for offset, length in zip(values[0::2], values[1::2], strict=True):
        pos += offset
        flat[pos : pos + length] = 1
        pos += length
    return flat.reshape(width, height).T


class SIIMPneumothorax(Recipe):
    name = "siim-pneumothorax"
    description = "SIIM-ACR Pneumothorax (DICOM + RLE masks), for grounding and probes"

    def rows(self) -> Iterator[ManifestRow]:
        from PIL import Image

        dicom_root = self.expect("dicom-images-train", "dicom-images-train/<study>/<series>/<ImageId>.dcm")
        table = self.root / "train-rle.csv"
        codes: dict[str, list[str]] = defaultdict(list)
        for r in read_table(table, ["ImageId", "EncodedPixels"]):
            codes[r["ImageId"]].append(r["EncodedPixels"].strip())
        files = {p.stem: p for p in dicom_root.rglob("*.dcm")}
        mask_dir = self.out_dir / "masks" / "siim"
        for image_id, cs in codes.items():
            path = files.get(image_id)
            if path is None:
                continue
            positive = any(c != "-1" for c in cs)
            annotations = []
            if positive:
                mask = np.zeros((1024, 1024), dtype=np.uint8)
                for c in cs:
                    if c != "-1":
                        try:
                            mask |= decode_siim_rle(c)
                        except ValueError as exc:
                            raise DatasetRecipeError(str(exc), path=table, field=f"EncodedPixels[{image_id}]") from None
                mask_dir.mkdir(parents=True, exist_ok=True)
                mpath = mask_dir / f"{image_id}.png"
                Image.fromarray(mask * 255).save(mpath)
                annotations.append({"finding": "pneumothorax", "mask": relpath(mpath, self.out_dir)})
            yield ManifestRow(
                study_id=f"siim-{image_id}", patient_id=f"siim-{image_id}", split=patient_split(image_id),
                modality="CR", dims=2, image=self.image_ref(path), report={},
                labels={"pneumothorax": int(positive)}, annotations=annotations,
                view=None, meta=self.meta(corpus=self.name, has_report=False),
            )


RECIPES.add(RSNAPneumonia.name, RSNAPneumonia)
RECIPES.add(SIIMPneumothorax.name, SIIMPneumothorax)

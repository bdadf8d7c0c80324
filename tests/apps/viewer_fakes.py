"""A small stand-in for the library behind the viewer, with the ViewerBackend surface.

It lets the UI tests say exactly what the library returned (scores, reports, heatmaps)
and check that the page shows it; the tests against the real library live in
``test_viewer_real.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medvl_viewer.backend import Case, Query
from medvl.errors import ImageReadError

CT_FILE = Path(get_testdata_file("CT_small.dcm", download=False))

REPORTS = [
    "Heart size is normal. Small left pleural effusion. No pneumothorax.",
    "Cardiomegaly. Lungs are clear. No pleural effusion.",
    "Right upper lobe consolidation. Heart size normal.",
    "Large right pneumothorax. No effusion.",
    "Pulmonary edema. Cardiomegaly with bilateral effusions.",
    "Nodule in the left lower zone. Otherwise normal.",
    "Atelectasis at the left base. Small left pleural effusion.",
    "No acute cardiopulmonary abnormality.",
]


@dataclass
class FakeImage:
    array: np.ndarray
    spacing: tuple[float, ...]
    modality: str
    photometric_interpretation: str = "MONOCHROME2"
    windows: list[tuple[float, float]] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


class FakeBackend:
    """Eight cases sharing a real CT slice; word-overlap text scores; fixed image scores."""

    def __init__(self, n_cases: int = len(REPORTS)) -> None:
        self.cases = [
            Case(study_id=f"S{i:03d}", report=REPORTS[i % len(REPORTS)], image_path=CT_FILE, labels={})
            for i in range(n_cases)
        ]
        self.cases[1].labels = {"cardiomegaly": 1, "pleural_effusion": 0, "atelectasis": -1}
        self.cases[7].labels = {"no_finding": 1}
        self.calls: list[tuple[str, Any]] = []

    def case_ids(self) -> list[str]:
        return [c.study_id for c in self.cases]

    def case(self, study_id: str) -> Case:
        return next(c for c in self.cases if c.study_id == study_id)

    def _ranked(self, scores: list[float], k: int) -> list[Case]:
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return [Case(**{**vars(self.cases[i]), "score": float(scores[i])}) for i in order]

    def search_text(self, text: str, k: int, against: str = "image") -> list[Case]:
        self.calls.append(("search_text", text, against))
        q = _words(text)
        return self._ranked([len(q & _words(c.report)) / max(len(q), 1) for c in self.cases], k)

    def search_image(self, image_path: Path, k: int) -> list[Case]:
        self.calls.append(("search_image", Path(image_path)))
        return self._ranked([1.0 - 0.1 * i for i in range(len(self.cases))], k)

    def read_image(self, image_path: Path) -> FakeImage:
        self.calls.append(("read_image", Path(image_path)))
        path = Path(image_path)
        try:
            if path.is_dir():
                slices = [pydicom.dcmread(p) for p in sorted(path.iterdir())]
                arr = np.stack([apply_modality_lut(d.pixel_array, d) for d in slices], axis=-1).astype(np.float32)
                return FakeImage(arr, (1.0, 1.0, 1.0), str(slices[0].Modality))
            if path.suffix == ".nii":
                img = nib.as_closest_canonical(nib.load(path))
                arr = np.asarray(img.dataobj, dtype=np.float32)
                arr = arr[..., 0] if arr.ndim == 4 else arr
                return FakeImage(arr, tuple(float(z) for z in img.header.get_zooms()[:3]), "OT")
            ds = pydicom.dcmread(path)
            arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            windows = [(40.0, 400.0)] if ds.Modality == "CT" else []
            return FakeImage(arr, tuple(float(s) for s in ds.PixelSpacing), str(ds.Modality), windows=windows)
        except Exception as exc:  # noqa: BLE001 - the real reader raises ImageReadError too
            raise ImageReadError(f"cannot read ({type(exc).__name__})", path=path) from None

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        return {"lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)} if modality == "CT" else {}

    def zero_shot(self, image_path: Path, modality: str | None = None) -> dict[str, float] | None:
        self.calls.append(("zero_shot", Path(image_path), modality))
        if modality not in ("CT", "CR", "DX"):
            return None
        return {"pleural_effusion": 0.81, "cardiomegaly": 0.12, "pneumothorax": 0.4}

    def heatmap(self, image_path: Path, phrase: str) -> np.ndarray | None:
        """Hot top-left corner; for a volume (a series folder) only in the first slice."""
        self.calls.append(("heatmap", phrase))
        if Path(image_path).is_dir():
            n = len(list(Path(image_path).iterdir()))
            heat = np.zeros((n, 4, 4), dtype=np.float32)
        else:
            heat = np.zeros((1, 4, 4), dtype=np.float32)
        heat[0, 0, 0] = 1.0
        return heat if Path(image_path).is_dir() else heat[0]

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        if query.text is None:
            return [1.0 if "effusion" in s.lower() else 0.0 for s in sentences]
        q = _words(query.text)
        return [len(q & _words(s)) / max(len(q), 1) for s in sentences]

"""A small stand-in for the library behind the viewer, with the Catalogue and ViewerBackend surfaces.

It lets the UI tests say exactly what the library returned (scores, reports, warnings,
heatmaps) and check that the page shows it; images are read with the real
``medvl.io`` reader. The tests against the real library live in ``test_viewer_real.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.data import get_testdata_file

from medvl_viewer.backend import (
    Case,
    CaseSummary,
    FindingScores,
    Heatmap,
    ModelInfo,
    Query,
    SearchResult,
)

CT_FILE = Path(get_testdata_file("CT_small.dcm", download=False))

REPORTS = [
    "FINDINGS: Heart size is normal. Small left pleural effusion. There is no pneumothorax.\n"
    "IMPRESSION: Left effusion.\nCOMPARISON: None.\nINDICATION: Rule out left pneumothorax.",
    "FINDINGS: Cardiomegaly. Lungs are clear. No pleural effusion.\nIMPRESSION: Cardiomegaly.",
    "FINDINGS: Right upper lobe consolidation. Heart size normal.\nIMPRESSION: RUL consolidation.",
    "FINDINGS: Large right pneumothorax. No effusion.\nIMPRESSION: Right pneumothorax.",
    "FINDINGS: Pulmonary edema. Cardiomegaly with bilateral effusions.\nIMPRESSION: Edema.",
    "FINDINGS: Nodule in the left lower zone. Otherwise normal.\nIMPRESSION: Left nodule.",
    "FINDINGS: Left PTX with a visible pleural line. Small left pleural effusion.\nIMPRESSION: Left PTX.",
    "FINDINGS: No acute cardiopulmonary abnormality.\nIMPRESSION: Normal.",
]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


class FakeLibrary:
    """Cases sharing a real CT slice; word-overlap text scores; fixed image scores.

    Attributes that tests change: ``warnings`` (returned with every search),
    ``scores`` (``FindingScores`` or None), ``heat`` (the ``Heatmap`` returned),
    ``info`` (``ModelInfo``), ``dims`` of the index.
    """

    def __init__(self, n_cases: int = len(REPORTS)) -> None:
        self.cases = [
            Case(study_id=f"S{i:03d}", report=REPORTS[i % len(REPORTS)], image_path=CT_FILE, labels={},
                 modality="CT", view=None)
            for i in range(n_cases)
        ]
        self.cases[0].labels = {"pleural_effusion": 1, "pneumothorax": 0}
        self.cases[1].labels = {"cardiomegaly": 1, "pleural_effusion": 0, "atelectasis": -1}
        self.cases[1].view = "PA"
        if n_cases > 7:
            self.cases[7].labels = {"no_finding": 1}
        self.calls: list[tuple[Any, ...]] = []
        self.loads: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.scores: FindingScores | None = FindingScores(
            {"pleural_effusion": 81.0, "cardiomegaly": 12.4, "pneumothorax": 40.0},
            note="Percentile among the indexed cases.")
        heat = np.zeros((4, 4), dtype=np.float32)
        heat[0, 0] = 1.0  # hot top-left corner
        self.heat = Heatmap(heat, "cam", "Class-activation map of the global embedding.")
        self.info = ModelInfo("trained with medvl")
        self.index_dims = 2

    # -- Catalogue -----------------------------------------------------------------------
    def size(self) -> int:
        return len(self.cases)

    def modalities(self) -> dict[str, int]:
        return {"CT": len(self.cases)}

    def dims(self) -> int:
        return self.index_dims

    def find(self, text: str, page: int, per_page: int) -> tuple[list[CaseSummary], int]:
        rows = [CaseSummary(c.study_id, c.modality, c.view, tuple(k for k, v in c.labels.items() if v == 1))
                for c in self.cases]
        if text:
            rows = [r for r in rows if text.lower() in r.study_id.lower()
                    or any(text.lower() in p for p in r.positives)]
        return rows[page * per_page:(page + 1) * per_page], len(rows)

    def case(self, study_id: str) -> Case:
        return next(c for c in self.cases if c.study_id == study_id)

    def read_image(self, image_path: Path, frame: int | None = None) -> Any:
        from medvl.io import read_image

        self.calls.append(("read_image", Path(image_path), frame))
        return read_image(image_path, frame=frame) if frame is not None else read_image(image_path)

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        return {"lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)} if modality == "CT" else {}

    # -- ViewerBackend -------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        return self.info

    def _ranked(self, scores: list[float], k: int, exclude: str | None = None) -> list[Case]:
        order = np.argsort(-np.asarray(scores), kind="stable")
        out = []
        for i in order:
            if self.cases[i].study_id == exclude:
                continue
            out.append(Case(**{**vars(self.cases[i]), "score": float(scores[i]), "relative": 100.0 * scores[i]}))
        return out[:k]

    def search_text(self, text: str, k: int, against: str = "image", *, use_reports: bool = True) -> SearchResult:
        self.calls.append(("search_text", text, against, use_reports))
        q = _words(text)
        hits = self._ranked([len(q & _words(c.report)) / max(len(q), 1) for c in self.cases], k)
        return SearchResult(hits, warnings=list(self.warnings), reference="Match percentile: fake.",
                            reranked=use_reports)

    def search_image(self, image_path: Path, k: int, *, modality: str | None = None,
                     exclude: str | None = None, frame: int | None = None) -> SearchResult:
        self.calls.append(("search_image", Path(image_path), modality, exclude, frame))
        hits = self._ranked([1.0 - 0.1 * i for i in range(len(self.cases))], k, exclude)
        return SearchResult(hits, warnings=list(self.warnings), reference="Match percentile: fake.")

    def finding_scores(self, image_path: Path, modality: str | None = None,
                       frame: int | None = None) -> FindingScores | None:
        self.calls.append(("finding_scores", Path(image_path), modality, frame))
        return self.scores if modality in ("CT", "CR", "DX") else None

    def heatmap(self, image_path: Path, phrase: str, frame: int | None = None) -> Heatmap:
        self.calls.append(("heatmap", phrase, frame))
        return self.heat

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        if query.text is None:
            return [1.0 if "effusion" in s.lower() else 0.0 for s in sentences]
        q = _words(query.text)
        return [len(q & _words(s)) / max(len(q), 1) for s in sentences]

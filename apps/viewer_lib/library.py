"""The real :class:`~apps.viewer_lib.backend.ViewerBackend`: calls into medvl.

Imports of torch-heavy rooms happen inside methods or ``__init__`` so that importing the
viewer's helpers stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from apps.viewer_lib.backend import Case, Query, to_case
from medvl.errors import CaseIndexError


class LibraryBackend:
    """Model + index loaded from disk, exposing what the viewer needs.

    Args:
        index_dir: a folder written by ``medvl.index.build_index``.
        model_dir: a folder written by ``MedVLModel.save_pretrained``.
    """

    def __init__(self, index_dir: Path, model_dir: Path) -> None:
        import torch

        from medvl.index import CaseIndex
        from medvl.models import MedVLModel

        self.index_dir = Path(index_dir)
        self.model_dir = Path(model_dir)
        self.model = MedVLModel.from_pretrained(self.model_dir)
        self.model.eval()
        self.index = CaseIndex.open(self.index_dir)
        self._torch = torch

    # -- index -------------------------------------------------------------------
    def case_ids(self) -> list[str]:
        for name in ("study_ids", "case_ids", "ids"):
            value = getattr(self.index, name, None)
            if value is not None:
                return [str(s) for s in (value() if callable(value) else value)]
        raise CaseIndexError("the index cannot list its cases", path=self.index_dir)

    def case(self, study_id: str) -> Case:
        for name in ("get", "case", "lookup"):
            fn = getattr(self.index, name, None)
            if callable(fn):
                return to_case(fn(study_id))
        raise CaseIndexError("the index cannot look up a case", path=self.index_dir, field=study_id)

    def search_text(self, text: str, k: int) -> list[Case]:
        with self._torch.inference_mode():
            return [to_case(h) for h in self.index.search_text(self.model, text, k)]

    def search_image(self, image_path: Path, k: int) -> list[Case]:
        with self._torch.inference_mode():
            return [to_case(h) for h in self.index.search_image(self.model, str(image_path), k)]

    # -- images ------------------------------------------------------------------
    def read_image(self, image_path: Path) -> Any:
        from medvl.io import read_image

        return read_image(image_path)

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        # The presets file holds Hounsfield-unit windows: they mean something for CT only.
        if modality != "CT":
            return {}
        from medvl.io import window_presets

        return dict(window_presets())

    # -- model -------------------------------------------------------------------
    def zero_shot(self, image_path: Path) -> dict[str, float] | None:
        return None

    def heatmap(self, image_path: Path, phrase: str) -> np.ndarray | None:
        return None

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        if not sentences or not query.text:
            return None
        with self._torch.inference_mode():
            q = self.model.embed_texts([query.text]).embeds
            s = self.model.embed_texts(list(sentences)).embeds
            q = self._torch.nn.functional.normalize(q.float(), dim=-1)
            s = self._torch.nn.functional.normalize(s.float(), dim=-1)
            return (s @ q.T).squeeze(-1).tolist()

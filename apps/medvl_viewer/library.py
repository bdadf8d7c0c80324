"""The real :class:`~medvl_viewer.backend.ViewerBackend`: calls into medvl.

Nothing here computes a similarity, a probability or a heatmap itself: searches are
``medvl.index.CaseIndex`` calls, query images are preprocessed by the index with the data
section it was built with (``load_query_image``), embeddings come from
``medvl.eval.embed``, zero-shot scores from ``medvl.eval.zeroshot`` with the prompt sets
of ``medvl.eval.prompts``, heatmaps from ``medvl.eval.phrase_heatmap``. What is left
here is bookkeeping: caching per query, and cropping a heatmap from the model's padded
input grid back to the region the image occupies.

Torch-heavy imports happen in ``__init__`` and methods, so importing the viewer's
helpers stays cheap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medvl_viewer.backend import Case, Query, to_case
from medvl.errors import ConfigError, ImageReadError

T = TypeVar("T")


class _LRU:
    """A small thread-safe memo: Streamlit serves each browser session in its own thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()  # outside the lock: a slow model call must not block other sessions
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


class LibraryBackend:
    """Model + index loaded from disk, exposing what the viewer needs.

    Args:
        index_dir: a folder written by ``medvl.index.build_index``.
        model_dir: a folder written by ``MedVLModel.save_pretrained``.

    Raises:
        CaseIndexError: no index at ``index_dir``, or one built with another model.
        CheckpointError: ``model_dir`` is not a loadable model directory.
    """

    def __init__(self, index_dir: Path, model_dir: Path) -> None:
        import torch

        from medvl.index import CaseIndex
        from medvl.models import MedVLModel

        self._torch = torch
        self.index_dir = Path(index_dir)
        self.model_dir = Path(model_dir)
        self.model = MedVLModel.from_pretrained(self.model_dir)
        self.model.eval()
        self.index = CaseIndex.open(self.index_dir)
        self.index.check_model(self.model)  # fail at start, not at the first query
        # One index (one SQLite connection) serves every browser session's thread:
        # its calls are serialised. Model calls outside the index run concurrently.
        self._index_lock = threading.RLock()
        self._case_ids: list[str] | None = None
        self._images = _LRU(8)  # volumes can be large: keep few
        self._inputs = _LRU(16)
        self._results = _LRU(256)
        self._prompts = _LRU(4)

    # -- index -------------------------------------------------------------------
    def case_ids(self) -> list[str]:
        # The opened version is immutable, so its id list is read once.
        with self._index_lock:
            if self._case_ids is None:
                self._case_ids = self.index.study_ids()
            return list(self._case_ids)

    def case(self, study_id: str) -> Case:
        with self._index_lock:
            return to_case(self.index.get(study_id))

    def search_text(self, text: str, k: int, against: str = "image") -> list[Case]:
        def make() -> list[Any]:
            with self._index_lock:
                return self.index.search_text(self.model, text, k, against=against)

        return [to_case(h) for h in self._results.get(("text", text, k, against), make)]

    def search_image(self, image_path: Path, k: int) -> list[Case]:
        def make() -> list[Any]:
            x = self._input(image_path)  # read + preprocess outside the lock
            with self._index_lock:
                return self.index.search_image(self.model, x, k)

        return [to_case(h) for h in self._results.get(("image", str(image_path), k), make)]

    # -- images ------------------------------------------------------------------
    def read_image(self, image_path: Path) -> Any:
        from medvl.io import read_image

        return self._images.get(str(image_path), lambda: read_image(image_path))

    def _input(self, image_path: Path) -> np.ndarray:
        """The model input of an image, preprocessed as the indexed studies were."""
        # load_query_image reads only the index's stored data section, not SQLite.
        return self._inputs.get(str(image_path), lambda: self.index.load_query_image(image_path))

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        # The presets file holds Hounsfield-unit windows: they mean something for CT only.
        if modality != "CT":
            return {}
        from medvl.io import window_presets

        return dict(window_presets())

    # -- model -------------------------------------------------------------------
    def _image_embedding(self, image_path: Path) -> np.ndarray:
        from medvl.eval.embed import embed_images

        def make() -> np.ndarray:
            x = self._torch.as_tensor(self._input(image_path)).float()[None]
            return embed_images(self.model, x)[0]

        return self._results.get(("embed", str(image_path)), make)

    def _prompt_embeddings(self, modality: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]] | None:
        from medvl.eval.embed import embed_texts
        from medvl.eval.prompts import prompt_set_for_modality

        def make() -> tuple[list[str], list[np.ndarray], list[np.ndarray]] | None:
            try:
                prompts = prompt_set_for_modality(modality)
            except ConfigError:
                return None  # no prompt set written for this modality (e.g. MR)
            names = prompts.findings
            pos = [embed_texts(self.model, prompts.positive[f]) for f in names]
            neg = [embed_texts(self.model, prompts.negative[f]) for f in names]
            return names, pos, neg

        return self._prompts.get(modality.upper(), make)

    def zero_shot(self, image_path: Path, modality: str | None = None) -> dict[str, float] | None:
        from medvl.eval.zeroshot import zeroshot_scores

        modality = modality or str(getattr(self.read_image(image_path), "modality", "") or "")
        prompts = self._prompt_embeddings(modality) if modality else None
        if prompts is None:
            return None
        names, pos, neg = prompts
        scale = min(float(self.model.logit_scale.detach().exp()), 100.0)
        scores = zeroshot_scores(self._image_embedding(image_path)[None], pos, neg, logit_scale=scale)[0]
        return {name: float(s) for name, s in zip(names, scores, strict=True)}

    def heatmap(self, image_path: Path, phrase: str) -> np.ndarray | None:
        from medvl.eval import phrase_heatmap

        def make() -> np.ndarray:
            x = self._input(image_path)
            heat = phrase_heatmap(self.model, x, phrase, spatial_dims=x.ndim - 1)
            return heat[self._image_region(image_path, heat.shape)]

        return self._results.get(("heat", str(image_path), phrase), make)

    def _image_region(self, image_path: Path, input_shape: tuple[int, ...]) -> tuple[slice, ...]:
        """Where the image lies on the model input grid (the rest is padding).

        A mask of ones goes through the same geometric steps as the image
        (``ModelInputTransform.grid``: aspect-preserving resize and padding, as
        ``medvl.eval.grounding`` does for annotation masks); its bounding box is the
        image's region.
        """
        from medvl.data.dataset import as_data_config
        from medvl.data.transforms import ModelInputTransform

        image = self.read_image(image_path)
        tf = ModelInputTransform(as_data_config(dict(self.index.info.get("data") or {})))
        array = np.asarray(image.array)
        spatial = array.shape[: len(input_shape)]
        ones = np.ones((1, *spatial), dtype=np.float32)
        valid = tf.grid(ones, image.spacing if len(input_shape) == 3 else None)[0] >= 0.5
        if valid.shape != tuple(input_shape) or not valid.any():
            raise ImageReadError("cannot place the heatmap on the image", path=image_path, field="grid")
        idx = np.nonzero(valid)
        return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)

    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        from medvl.eval.embed import embed_texts

        if not sentences:
            return None
        if query.text:
            q = self._results.get(("qtext", query.text), lambda: embed_texts(self.model, [query.text])[0])
        elif query.image_path is not None:
            q = self._image_embedding(query.image_path)
        else:
            return None
        key = ("sentences", tuple(sentences))
        s = self._results.get(key, lambda: embed_texts(self.model, list(sentences)))
        return (s @ q).astype(float).tolist()

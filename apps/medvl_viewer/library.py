"""The real :class:`~medvl_viewer.backend.ViewerBackend`: calls into medvl.

Nothing here computes an embedding, a probability or a heatmap itself, nor reads
negation or laterality: embeddings, zero-shot scores and heatmaps come from the
library's inference calls, report statements from ``medvl.data.assertions``, searches
from ``medvl.index.CaseIndex``. What is left here is bookkeeping: caching per query,
putting numbers in the index's context (percentiles against the indexed cases), and
collecting the reasons an input is unlike the index into one list of warnings.

Torch-heavy imports happen in ``__init__`` and methods, so importing the viewer's
helpers stays cheap.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import ConfigError, ImageReadError
from medvl_viewer.backend import (
    UNKNOWN_MODALITIES,
    Case,
    FindingScores,
    Heatmap,
    ModelInfo,
    Query,
    SearchResult,
    to_case,
)
from medvl_viewer.catalogue import LRU

#: Index cases sampled for the reference distributions (each costs one row of a matmul).
REFERENCE_SAMPLE = 2000
#: A query whose best match is below this percentile of the index's own best matches
#: is flagged as unlike the index.
OOD_PERCENTILE = 1.0
#: Fewer indexed cases than this give no reliable reference distribution: no distance warning.
MIN_REFERENCE = 50
#: Candidates re-ranked by their reports' statements for a text query.
RERANK_POOL = 50
#: Modalities of chest radiographs (an index of CR/DX accepts either).
RADIOGRAPH = {"CR", "DX"}


def percentile(value: float, reference: np.ndarray) -> float:
    """Share of ``reference`` at or below ``value``, in percent (scipy's ``weak`` kind)."""
    from scipy.stats import percentileofscore

    return float(percentileofscore(np.asarray(reference, dtype=np.float64), float(value), kind="weak"))


class LibraryBackend:
    """Model + index loaded from disk, exposing what the viewer needs.

    Args:
        index_dir: a folder written by ``medvl.index.build_index``.
        model_dir: a model directory (``medvl.load`` reads it).

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
        self._inputs = LRU(16)
        self._results = LRU(256)
        self._prompts = LRU(4)
        self._references = LRU(4)
        self._provenance = self._read_provenance()
        data = dict(self.index.info.get("data") or {})
        self._dims = int(data.get("dims", 2))
        with self._index_lock:
            from medvl.index import metadata

            n = len(self.index)
            rows = metadata.fetch_positions(self.index.conn, list(range(n)))
        self._modalities = sorted({str(r.get("modality") or "").upper() for r in rows.values()} - {""})

    # -- model description -------------------------------------------------------------
    def _read_provenance(self) -> dict[str, Any] | None:
        path = self.model_dir / "provenance.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def model_info(self) -> ModelInfo:
        p = self._provenance or {}
        name = str(p.get("name") or p.get("hub_name") or "") or "trained with medvl"
        source = str(p.get("hub_name") or p.get("source") or "")
        return ModelInfo(name=name, source=source, licence=str(p.get("licence") or ""), calibrated=False)

    # -- inputs --------------------------------------------------------------------------
    def _input(self, image_path: Path, frame: int | None = None) -> np.ndarray:
        """The model input of an image, preprocessed as the indexed studies were."""
        if frame is None:
            return self._inputs.get(str(image_path), lambda: self.index.load_query_image(image_path))
        raise ImageReadError("reading one frame of a 4D image for the model is not supported yet",
                             path=image_path, field="frame")

    def _image_embedding(self, image_path: Path, frame: int | None = None) -> np.ndarray:
        from medvl.eval.embed import embed_images

        def make() -> np.ndarray:
            x = self._torch.as_tensor(self._input(image_path, frame)).float()[None]
            return embed_images(self.model, x)[0]

        return self._results.get(("embed", str(image_path), frame), make)

    def _text_embeddings(self, texts: list[str]) -> np.ndarray:
        from medvl.eval.embed import embed_texts

        return self._results.get(("texts", tuple(texts)), lambda: embed_texts(self.model, list(texts)))

    # -- input checks --------------------------------------------------------------------
    def _image_warnings(self, image_path: Path, modality: str | None, frame: int | None) -> list[str]:
        """Reasons an image is unlike the indexed ones (modality, body part, dimensions)."""
        from medvl.io import read_image

        image = read_image(image_path, frame=frame) if frame is not None else read_image(image_path)
        out: list[str] = []
        own = str(getattr(image, "modality", "") or "").upper()
        mod = own if own not in UNKNOWN_MODALITIES else (modality or "").upper()
        if mod and self._modalities:
            same = mod in self._modalities or (mod in RADIOGRAPH and RADIOGRAPH & set(self._modalities))
            if not same:
                article = "an" if mod[:1] in "AEFHILMNORSX" else "a"  # letters said with a vowel: "an MR"
                out.append(f"It is {article} {mod} image; the index holds {', '.join(self._modalities)} images.")
        body = str((getattr(image, "tags", {}) or {}).get("BodyPartExamined", "") or "").upper()
        if body and body not in ("CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS"):
            out.append(f"The file records the body part as {body.lower()}; the index holds chest studies.")
        dims = 3 if getattr(image, "affine", None) is not None else 2
        if dims != self._dims:
            kind = {2: "a 2D image", 3: "a 3D volume"}
            out.append(f"It is {kind[dims]}; the index holds {kind[self._dims]}s.")
        return out

    def _reference(self, query: str, against: str) -> np.ndarray:
        """The index's own best-match similarities, for putting a query's in context.

        ``image`` queries: each sampled case's image against every other case's image.
        ``text`` queries: each sampled case's report against the images (``against``)
        or the other reports, its best match. A real query of the index's kind usually
        lands inside this distribution; an unrelated one far below it.
        """

        def make() -> np.ndarray:
            vectors = {t: np.asarray(v, dtype=np.float32) for t, v in self.index.vectors.items()}
            n = vectors["image"].shape[0]
            rng = np.random.default_rng(0)
            pick = rng.choice(n, size=min(n, REFERENCE_SAMPLE), replace=False) if n else np.zeros(0, int)
            source = vectors["image" if query == "image" else "report"][pick]
            target = vectors[against]
            sims = source @ target.T  # (S, N)
            if query == "image" or against == "report":
                sims[np.arange(len(pick)), pick] = -np.inf  # a case is not its own neighbour
            return sims.max(axis=1) if sims.size else np.zeros(0, np.float32)

        return self._references.get((query, against), make)

    def _context(self, hits: list[Case], reference: np.ndarray) -> None:
        if reference.size:
            for h in hits:
                if h.score is not None:
                    h.relative = percentile(h.score, reference)

    # -- searches ------------------------------------------------------------------------
    def _search_vector(self, q: np.ndarray, k: int, against: str) -> list[Case]:
        with self._index_lock:
            return [to_case(h) for h in self.index.search_vector(q, k, against=against)]

    def search_image(self, image_path: Path, k: int, *, modality: str | None = None,
                     exclude: str | None = None, frame: int | None = None) -> SearchResult:
        warnings = self._image_warnings(image_path, modality, frame)
        if any("index holds" in w and ("2D" in w or "3D" in w) for w in warnings):
            return SearchResult([], warnings=warnings)  # the model cannot embed it
        q = self._image_embedding(image_path, frame)
        hits = [h for h in self._search_vector(q, k + (1 if exclude else 0), "image") if h.study_id != exclude][:k]
        reference = self._reference("image", "image")
        self._context(hits, reference)
        # An indexed case used as the query is in the index by definition.
        if exclude is None and reference.size >= MIN_REFERENCE and hits and hits[0].relative is not None \
                and hits[0].relative < OOD_PERCENTILE:
            warnings.append(
                "Its best match is less similar than almost every indexed case is to its own nearest "
                "neighbour: the image is unlike those in the index.")
        return SearchResult(hits, warnings=warnings, reference=_REFERENCE_TEXT["image", "image"])

    def search_text(self, text: str, k: int, against: str = "image", *, use_reports: bool = True) -> SearchResult:
        from medvl.data.assertions import Agreement, find_assertions, report_agreement

        q = self._text_embeddings([text])[0]
        query = find_assertions(text)
        pool = max(k, RERANK_POOL) if use_reports and query else k
        hits = self._search_vector(q, pool, against)
        reranked = False
        if query:
            for h in hits:
                h.agreement = report_agreement(query, h.report).value
            if use_reports:
                rank = {Agreement.AGREES.value: 0, Agreement.SILENT.value: 1, Agreement.CONTRADICTS.value: 2}
                hits.sort(key=lambda h: rank[h.agreement or "silent"])  # stable: similarity order within
                reranked = True
        hits = hits[:k]
        reference = self._reference("text", against)
        self._context(hits, reference)
        warnings: list[str] = []
        best = max((h.relative for h in hits if h.relative is not None), default=None)
        if not query and reference.size >= MIN_REFERENCE and best is not None and best < OOD_PERCENTILE:
            warnings.append("The text names no finding the viewer knows, and no case matches it better than "
                            "almost every report matches its own case: it may not describe a chest study.")
        return SearchResult(hits, warnings=warnings, reference=_REFERENCE_TEXT["text", against], reranked=reranked)

    # -- finding scores ------------------------------------------------------------------
    def _prompt_embeddings(self, modality: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]] | None:
        from medvl.eval.prompts import prompt_set_for_modality

        def make() -> tuple[list[str], list[np.ndarray], list[np.ndarray]] | None:
            try:
                prompts = prompt_set_for_modality(modality)
            except ConfigError:
                return None  # no prompt set written for this modality (e.g. MR)
            names = prompts.findings
            pos = [self._text_embeddings(list(prompts.positive[f])) for f in names]
            neg = [self._text_embeddings(list(prompts.negative[f])) for f in names]
            return names, pos, neg

        return self._prompts.get(modality.upper(), make)

    def _margins(self, vectors: np.ndarray, modality: str) -> tuple[list[str], np.ndarray] | None:
        """Per-finding positive-vs-negative prompt margins ``(N, K)`` (monotone in the score)."""
        from medvl.eval.zeroshot import zeroshot_scores

        prompts = self._prompt_embeddings(modality)
        if prompts is None:
            return None
        names, pos, neg = prompts
        # logit_scale 1: the same ranking as the model's softmax, without saturating at 1.0.
        return names, zeroshot_scores(vectors, pos, neg, logit_scale=1.0)

    def finding_scores(self, image_path: Path, modality: str | None = None,
                       frame: int | None = None) -> FindingScores | None:
        from medvl.io import read_image

        own = str(getattr(read_image(image_path), "modality", "") or "").upper()
        modality = (own if own not in UNKNOWN_MODALITIES else (modality or "")).upper()
        if not modality:
            return None
        query = self._margins(self._image_embedding(image_path, frame)[None], modality)
        if query is None:
            return None
        names, q = query

        def index_margins() -> np.ndarray:
            vectors = np.asarray(self.index.vectors["image"], dtype=np.float32)
            got = self._margins(vectors, modality)
            return got[1] if got else np.zeros((0, len(names)))

        ref = self._results.get(("index-margins", modality), index_margins)
        values = {name: percentile(q[0, i], ref[:, i]) for i, name in enumerate(names)}
        return FindingScores(values, "percentile", note=(
            f"Percentile of this image's score among the {ref.shape[0]:,} indexed cases: "
            "the model is not calibrated, so these rank cases and are not probabilities of disease."))

    # -- heatmaps ------------------------------------------------------------------------
    def heatmap(self, image_path: Path, phrase: str, frame: int | None = None) -> Heatmap:
        from medvl.eval import phrase_heatmap

        def make() -> Heatmap:
            x = self._input(image_path, frame)
            heat = phrase_heatmap(self.model, x, phrase, spatial_dims=x.ndim - 1)
            return Heatmap(heat[self._image_region(image_path, heat.shape)], "local",
                           "Patch-to-phrase similarity of the model's local embeddings.")

        return self._results.get(("heat", str(image_path), frame, phrase), make)

    def _image_region(self, image_path: Path, input_shape: tuple[int, ...]) -> tuple[slice, ...]:
        """Where the image lies on the model input grid (the rest is padding)."""
        from medvl.data.dataset import as_data_config
        from medvl.data.transforms import ModelInputTransform
        from medvl.io import read_image

        image = read_image(image_path)
        tf = ModelInputTransform(as_data_config(dict(self.index.info.get("data") or {})))
        array = np.asarray(image.array)
        spatial = array.shape[: len(input_shape)]
        ones = np.ones((1, *spatial), dtype=np.float32)
        valid = tf.grid(ones, image.spacing if len(input_shape) == 3 else None)[0] >= 0.5
        if valid.shape != tuple(input_shape) or not valid.any():
            raise ImageReadError("cannot place the heatmap on the image", path=image_path, field="grid")
        idx = np.nonzero(valid)
        return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)

    # -- highlights ----------------------------------------------------------------------
    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        if not sentences:
            return None
        if query.text:
            q = self._text_embeddings([query.text])[0]
        elif query.image_path is not None:
            q = self._image_embedding(query.image_path)
        else:
            return None
        s = self._text_embeddings(list(sentences))
        return (s @ q).astype(float).tolist()


_REFERENCE_TEXT = {
    ("image", "image"): "Match percentile: where the similarity stands among each indexed case's similarity "
                        "to its own nearest neighbour (50 = a typical nearest match in this index).",
    ("text", "image"): "Match percentile: where the similarity stands among each indexed report's similarity "
                       "to its best-matching image (50 = a typical best match in this index).",
    ("text", "report"): "Match percentile: where the similarity stands among each indexed report's similarity "
                        "to its nearest other report.",
}

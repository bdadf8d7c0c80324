"""The real :class:`~medvl_viewer.backend.ViewerBackend`: the one inference path, ``medvl.load``.

Nothing here preprocesses an image, computes an embedding, a zero-shot score, a
calibration, an out-of-distribution check or a heatmap, nor reads negation or
laterality: those are ``medvl.load(dir)`` (:class:`medvl.inference.Pipeline`: ``read``,
``embed_images``, ``embed_texts``, ``classify``, ``zeroshot``, ``check_image``,
``check_text``, ``heatmap``) and ``medvl.data.assertions``; searches are
``medvl.index.CaseIndex.search_vector``. What is left here is bookkeeping: caching per
query, putting numbers in the index's context (percentiles against the indexed cases,
for a model without calibration), and collecting the reasons an input is unlike the
index into one list of warnings.

Torch-heavy imports happen in ``__init__`` and methods, so importing the viewer's
helpers stays cheap.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

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
#: Fewer zero-shot prompt phrases than this give no reference for text queries.
MIN_PHRASES = 20
#: Candidates re-ranked by their reports' statements for a text query.
RERANK_POOL = 200
#: Modalities of chest radiographs (an index of CR/DX accepts either).
RADIOGRAPH = {"CR", "DX"}


def percentile(value: float, reference: np.ndarray) -> float:
    """Share of ``reference`` at or below ``value``, in percent (scipy's ``weak`` kind)."""
    from scipy.stats import percentileofscore

    return float(percentileofscore(np.asarray(reference, dtype=np.float64), float(value), kind="weak"))


def _sentence(reason: str) -> str:
    """A library reason fragment ("CT image given to a model ...") as a sentence."""
    reason = reason.strip().rstrip(".")
    return reason[:1].upper() + reason[1:] + "." if reason else ""


class LibraryBackend:
    """A model directory (``medvl.load``) and the case index built with it.

    Args:
        index_dir: a folder written by ``medvl index build``.
        model_dir: a model directory.

    Raises:
        CaseIndexError: no index at ``index_dir``, or one built with another model.
        CheckpointError: ``model_dir`` is not a loadable model directory.
    """

    def __init__(self, index_dir: Path, model_dir: Path) -> None:
        import medvl
        from medvl.index import CaseIndex

        self.index_dir = Path(index_dir)
        self.model_dir = Path(model_dir)
        self.pipe = medvl.load(self.model_dir)
        self.index = CaseIndex.open(self.index_dir)
        self.index.check_model(self.pipe.model)  # fail at start, not at the first query
        # One index (one SQLite connection) serves every browser session's thread:
        # its calls are serialised. Model calls outside the index run concurrently.
        self._index_lock = threading.RLock()
        self._images = LRU(8)
        self._results = LRU(256)
        self._references = LRU(8)
        with self._index_lock:
            from medvl.index import metadata

            rows = metadata.fetch_positions(self.index.conn, list(range(len(self.index))))
        self._modalities = sorted({str(r.get("modality") or "").upper() for r in rows.values()} - {""})

    # -- model description -------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        p = self.pipe.provenance or {}
        name = str(p.get("name") or p.get("hub_name") or "") or "trained with medvl"
        source = str(p.get("hub_name") or p.get("source") or "")
        return ModelInfo(name=name, source=source, licence=str(p.get("licence") or p.get("license") or ""),
                         calibrated=self.pipe.calibration is not None)

    # -- inputs --------------------------------------------------------------------------
    def _image(self, path: Path, frame: int | None, modality: str | None) -> Any:
        """The image read as the model's preprocessing reads it; ``modality`` stands in for an unrecorded one."""

        def make() -> Any:
            img = self.pipe.read(Path(path), frame=frame)
            own = str(getattr(img, "modality", "") or "").upper()
            if modality and own in UNKNOWN_MODALITIES:
                img = dataclasses.replace(img, modality=modality.upper())
            return img

        return self._images.get((str(path), frame, (modality or "").upper()), make)

    def _key(self, path: Path, frame: int | None, modality: str | None) -> tuple[str, int | None, str]:
        return str(path), frame, (modality or "").upper()

    def _embedding(self, path: Path, frame: int | None, modality: str | None) -> np.ndarray:
        key = ("embed", *self._key(path, frame, modality))
        return self._results.get(key, lambda: self.pipe.embed_images([self._image(path, frame, modality)])[0])

    def _text_embeddings(self, texts: list[str]) -> np.ndarray:
        return self._results.get(("texts", tuple(texts)), lambda: self.pipe.embed_texts(list(texts)))

    def _classified(self, path: Path, frame: int | None, modality: str | None) -> Any:
        """``Pipeline.classify`` of the image (scores, calibration, OOD), once per query."""
        key = ("classify", *self._key(path, frame, modality))
        return self._results.get(key, lambda: self.pipe.classify(self._image(path, frame, modality)))

    def _fits_model(self, path: Path, frame: int | None, modality: str | None) -> Any:
        """``Pipeline.check_image`` for an image the model cannot take (dims), without running it."""
        return self._results.get(("check", *self._key(path, frame, modality)),
                                 lambda: self.pipe.check_image(self._image(path, frame, modality)))

    # -- input checks --------------------------------------------------------------------
    def _image_warnings(self, path: Path, frame: int | None, modality: str | None) -> tuple[list[str], bool]:
        """Why an image is unlike the model's training data or the index; and whether it can be searched."""
        from medvl.inference.ood import spatial_dims

        img = self._image(path, frame, modality)
        out: list[str] = []
        if spatial_dims(img) != self.pipe.dims:
            check = self._fits_model(path, frame, modality)
            return [_sentence(check.reason)], False
        check = self._classified(path, frame, modality)
        details = getattr(check, "ood_details", {}) or {}
        if check.ood:
            out.append(_sentence(check.ood_reason))
        mod = str(getattr(img, "modality", "") or "").upper()
        said = "modality" in details and not details["modality"].get("ok", True)
        if mod and mod not in UNKNOWN_MODALITIES and self._modalities and not said:
            same = mod in self._modalities or (mod in RADIOGRAPH and RADIOGRAPH & set(self._modalities))
            if not same:
                article = "an" if mod[:1] in "AEFHILMNORSX" else "a"  # letters said with a vowel: "an MR"
                out.append(f"It is {article} {mod} image; the index holds {', '.join(self._modalities)} images.")
        return out, True

    def _reference(self, query: str, against: str) -> np.ndarray:
        """The index's own best-match similarities, for putting a query's in context.

        ``image`` queries: each sampled case's image against every other case's image, its
        best match. ``text`` queries: each of the model's zero-shot prompts (short finding
        phrases such as "left pleural effusion", present and absent) against the images or
        the reports (``against``), its best match: a short query is compared with short
        phrases, not with whole reports. A real query of the index's kind usually lands
        inside this distribution; an unrelated one far below it.
        """

        def make() -> np.ndarray:
            target = np.asarray(self.index.vectors[against], dtype=np.float32)
            if query == "text":
                _, pos, neg = self.pipe.prompt_embeddings(self.pipe.prompt_set())
                phrases = np.concatenate([*pos, *neg]).astype(np.float32)
                return (phrases @ target.T).max(axis=1) if target.size else np.zeros(0, np.float32)
            n = target.shape[0]
            rng = np.random.default_rng(0)
            pick = rng.choice(n, size=min(n, REFERENCE_SAMPLE), replace=False) if n else np.zeros(0, int)
            sims = target[pick] @ target.T  # (S, N)
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
        warnings, searchable = self._image_warnings(image_path, frame, modality)
        if not searchable:
            return SearchResult([], warnings=warnings)
        q = self._embedding(image_path, frame, modality)
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
        check = self.pipe.check_text(text)
        if check.ood:
            warnings.append(_sentence(check.reason) + " It does not read like a radiology finding.")
        best = max((h.relative for h in hits if h.relative is not None), default=None)
        if not warnings and not query and reference.size >= MIN_PHRASES and best is not None \
                and best < OOD_PERCENTILE:
            warnings.append("The text names no finding the viewer knows, and its best match is weaker than almost "
                            "every finding phrase's best match in this index: it may not describe a chest study.")
        return SearchResult(hits, warnings=warnings, reference=_REFERENCE_TEXT["text", against], reranked=reranked)

    # -- finding scores ------------------------------------------------------------------
    def finding_scores(self, image_path: Path, modality: str | None = None,
                       frame: int | None = None) -> FindingScores | None:
        result = self._classified(image_path, frame, modality)
        if not result.scores:
            return None
        img = self._image(image_path, frame, modality)
        ps = self.pipe.prompt_set(img)
        names, logits, _ = self.pipe.zeroshot(self._embedding(image_path, frame, modality)[None], ps)

        def index_logits() -> np.ndarray:
            return self.pipe.zeroshot(np.asarray(self.index.vectors["image"], dtype=np.float32), ps)[1]

        # Logits rank exactly as the scores do, without the softmax's saturation at 1.
        ref = self._results.get(("index-logits", ps.name), index_logits)
        percentiles = {n: percentile(logits[0, i], ref[:, i]) for i, n in enumerate(names) if n in result.scores}
        calibrated = set(getattr(result, "calibrated_findings", []) or [])
        probabilities = {f: float(v) for f, v in result.scores.items() if f in calibrated}
        note = f"Percentile: how this image's score ranks among the {ref.shape[0]:,} indexed cases."
        if probabilities:
            note += (" Probability: calibrated on the model's validation split (Platt scaling), for the findings "
                     "it covers.")
        else:
            note += " The model is not calibrated: these rank cases and are not probabilities of disease."
        return FindingScores(percentiles, probabilities, note=note)

    # -- heatmaps ------------------------------------------------------------------------
    def heatmap(self, image_path: Path, phrase: str, frame: int | None = None) -> Heatmap:
        def make() -> Heatmap:
            img = self._image(image_path, frame, None)
            heat = self.pipe.heatmap(img, phrase)
            reason = _sentence(heat.reason)
            if heat.array is None:
                return Heatmap(None, None, reason or "No heatmap is available for this model.")
            array = np.asarray(heat.array, dtype=np.float32)
            box = getattr(heat, "source_box", None)
            if array.ndim == 2 and box is not None:
                array = _place(array, box, np.asarray(img.array).shape[:2])
            return Heatmap(array, heat.method, reason)

        return self._results.get(("heat", str(image_path), frame, phrase), make)

    # -- highlights ----------------------------------------------------------------------
    def sentence_scores(self, query: Query, sentences: list[str]) -> list[float] | None:
        if not sentences:
            return None
        if query.text:
            q = self._text_embeddings([query.text])[0]
        elif query.image_path is not None:
            q = self._embedding(query.image_path, None, None)
        else:
            return None
        return (self._text_embeddings(list(sentences)) @ q).astype(float).tolist()


def _place(array: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """A map over part of a radiograph (``box`` rows/cols, e.g. a centre crop) on the whole image grid."""
    from medvl_viewer.render import resize_map

    r0, r1, c0, c1 = (int(v) for v in box)
    rows, cols = int(shape[0]), int(shape[1])
    if (r0, r1, c0, c1) == (0, rows, 0, cols):
        return array
    # Keep the map's resolution: one map cell per (r1 - r0) / h rows of the source.
    h, w = array.shape
    scale_r, scale_c = h / max(r1 - r0, 1), w / max(c1 - c0, 1)
    full_h, full_w = max(1, round(rows * scale_r)), max(1, round(cols * scale_c))
    out = np.zeros((full_h, full_w), np.float32)
    top, left = round(r0 * scale_r), round(c0 * scale_c)
    part = resize_map(array, (min(h, full_h - top), min(w, full_w - left)))
    out[top:top + part.shape[0], left:left + part.shape[1]] = part
    return out


_REFERENCE_TEXT = {
    ("image", "image"): "Match percentile: where the similarity stands among each indexed case's similarity "
                        "to its own nearest neighbour (50 = a typical nearest match in this index).",
    ("text", "image"): "Match percentile: where the similarity stands among the best image matches of the model's "
                       "finding phrases (e.g. 'left pleural effusion') in this index (50 = a typical best match).",
    ("text", "report"): "Match percentile: where the similarity stands among the best report matches of the model's "
                        "finding phrases in this index (50 = a typical best match).",
}

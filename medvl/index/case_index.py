"""``CaseIndex``: open an on-disk case index and search it by text, image or vector."""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import CaseIndexError
from medvl.index import metadata, storage
from medvl.index.config import IndexConfig
from medvl.index.vectors import ApproxParams, approx_search, exact_search, read_approx
from medvl.inference.embedding import (
    model_fingerprint,  # the model id, shared with `medvl embed`
)

__all__ = ["CaseIndex", "Hit", "SearchResult", "model_fingerprint"]


@dataclass
class Hit:
    """One ranked case.

    Attributes:
        rank: 1-based rank.
        study_id: the study.
        score: cosine similarity to the query.
        report_text: the study's report (sections joined).
        image_path: path of the study's image, to read it (the corpus root joined with ``image_ref``).
        image_ref: the image as the index stores it, relative to the corpus root.
        labels: finding -> 1 / 0 / -1 as in the manifest.
        modality, view, split: from the manifest row.
    """

    rank: int
    study_id: str
    score: float
    report_text: str
    image_path: str
    labels: dict[str, int] = field(default_factory=dict)
    image_ref: str = ""
    modality: str | None = None
    view: str | None = None
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """Ranked cases for one query, and whether the query is outside the model's training data.

    Attributes:
        hits: the ranked cases.
        ood: the query (image or text) is out of distribution for the model; the hits are
            then nearest neighbours of something the model never learned, not similar cases.
        ood_reason: a plain sentence ("" when in distribution).
    """

    hits: list[Hit]
    ood: bool = False
    ood_reason: str = ""


class CaseIndex:
    """A read-only view of one committed index version.

    Open with :meth:`open`; the version is fixed at opening, so a concurrent build that
    commits a newer version does not change what this object sees.
    """

    def __init__(self, root: Path, version: Path, config: IndexConfig, corpus_root: str | Path | None = None) -> None:
        self.root = root
        self.version_dir = version
        self.config = config
        self.info = storage.read_info(version)
        recorded = self.info.get("corpus_root")  # relative to the index; absent in older indexes (absolute paths)
        self.corpus_root: Path | None = Path(corpus_root) if corpus_root is not None \
            else (root / recorded if recorded else None)
        self.vectors: dict[str, np.ndarray] = {}
        for t in storage.TARGETS:
            try:
                self.vectors[t] = np.load(version / f"{t}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CaseIndexError(f"vector file unreadable ({exc})", path=version / f"{t}.npy") from None
        self.conn = metadata.connect(version / "cases.sqlite", readonly=True)
        # One SQLite connection shared by the viewer's threads: serialise its use.
        self._lock = threading.Lock()
        n = metadata.count(self.conn)
        for t, v in self.vectors.items():
            if v.shape[0] != n:
                raise CaseIndexError(f"{v.shape[0]} {t} vectors for {n} cases", path=version,
                                     expected="one vector per case")
        self._approx: dict[str, Any] = {}
        # Models already matched against the fingerprint (weak: a freed model's id may be reused).
        self._checked: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def open(cls, path: str | Path, *, config: IndexConfig | dict[str, Any] | None = None,
             corpus_root: str | Path | None = None) -> CaseIndex:
        """Open the live version of the index at ``path``.

        Args:
            path: the index folder.
            config: index settings.
            corpus_root: where the corpus (the folder of the manifest it was built from) is
                now, when it was moved without the index; by default the place recorded
                relative to the index.

        Raises:
            CaseIndexError: no index there, or its files are corrupt.
        """
        from medvl.config import from_dict

        root = Path(path)
        cfg = config if isinstance(config, IndexConfig) else from_dict(IndexConfig, dict(config or {}), where="index")
        version = storage.current_dir(root) if root.is_dir() else None
        if version is None:
            raise CaseIndexError("no case index here", path=root, expected="a folder written by `medvl index build`")
        return cls(root, version, cfg, corpus_root=corpus_root)

    # -- description -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.vectors["image"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def study_ids(self) -> list[str]:
        """Every indexed study id, in vector order."""
        with self._lock:
            return metadata.study_ids(self.conn)

    def get(self, study_id: str) -> Hit:
        """The case of one study (score 1.0, rank 0).

        Raises:
            CaseIndexError: the study is not in the index.
        """
        with self._lock:
            case = metadata.fetch_study(self.conn, study_id)
        if case is None:
            raise CaseIndexError("study not in the index", path=self.root, field=study_id)
        return self._hit(case, 0, 1.0)

    def vector(self, study_id: str, target: str = "image") -> np.ndarray:
        """The stored unit-norm embedding of a study."""
        with self._lock:
            case = metadata.fetch_study(self.conn, study_id)
        if case is None:
            raise CaseIndexError("study not in the index", path=self.root, field=study_id)
        return np.asarray(self.vectors[self._target(target)][case["position"]])

    # -- search ------------------------------------------------------------------
    def _target(self, against: str) -> str:
        if against not in storage.TARGETS:
            raise CaseIndexError(f"cannot search against {against!r}", field="against",
                                 expected=" or ".join(storage.TARGETS))
        return against

    def _approx_index(self, target: str) -> Any | None:
        entry = (self.info.get("approximate") or {}).get(target)
        if not entry:
            return None
        if target not in self._approx:
            p = self.config.approx_params
            self._approx[target] = read_approx(self.version_dir / entry["file"], ApproxParams(
                kind=entry.get("kind", p.kind), nprobe=p.nprobe, ef_search=p.ef_search))
        return self._approx[target]

    def search_vector(
        self, query: np.ndarray, k: int = 10, *, against: str = "image", exact: bool | None = None
    ) -> list[Hit]:
        """Rank cases by cosine similarity to a query embedding.

        Args:
            query: ``(D,)`` embedding (normalised here).
            k: hits returned.
            against: ``"image"`` (find cases by their images) or ``"report"`` (by their reports).
            exact: force exact (True) or approximate (False) search; default: approximate
                when the index has one.
        """
        target = self._target(against)
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise CaseIndexError(f"query has dimension {q.shape[1]}", path=self.root, field="query",
                                 expected=f"{self.dim} as the index (was it built with another model?)")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if k < 1 or len(self) == 0:
            return []
        approx = None if exact else self._approx_index(target)
        if exact is False and approx is None:
            raise CaseIndexError("this index has no approximate search", path=self.root, field="exact")
        scores, idx = approx_search(approx, q, k) if approx is not None else exact_search(self.vectors[target], q, k)
        pairs = [(int(i), float(s)) for i, s in zip(idx[0], scores[0], strict=True) if i >= 0]
        with self._lock:
            cases = metadata.fetch_positions(self.conn, [i for i, _ in pairs])
        return [self._hit(cases[i], r, s) for r, (i, s) in enumerate(pairs, 1)]

    def check_model(self, model: Any) -> None:
        """Raise :class:`CaseIndexError` when ``model`` is not the model the index was built with."""
        want = (self.info.get("model") or {}).get("fingerprint")
        try:
            if model in self._checked:
                return
        except TypeError:  # not weak-referenceable: check every time
            pass
        if want and model_fingerprint(model) != want:
            raise CaseIndexError("the model differs from the one this index was built with", path=self.root,
                                 field="model", expected=f"the model of fingerprint {want} (or rebuild the index)")
        try:
            self._checked.add(model)
        except TypeError:
            pass

    def search_text(self, model: Any, text: str, k: int = 10, *, against: str = "image") -> list[Hit]:
        """Cases ranked by similarity to a free-text query (by default, their images).

        ``model`` is a :class:`medvl.inference.Pipeline` (the query is prepared as the
        training reports were) or a bare model (the text is embedded as given).
        """
        if not isinstance(text, str) or not text.strip():
            raise CaseIndexError("empty text query", field="text", expected="a phrase or sentence")
        from medvl.inference.embedding import embed_texts
        from medvl.inference.pipeline import Pipeline

        if isinstance(model, Pipeline):
            self.check_model(model.model)
            return self.search_vector(model.embed_texts([text])[0], k, against=against)
        self.check_model(model)
        return self.search_vector(embed_texts(model, [text])[0], k, against=against)

    def search_image(self, model: Any, image: Any, k: int = 10, *, against: str = "image") -> list[Hit]:
        """Cases ranked by similarity to an image (a file path or a model-input tensor).

        With a :class:`medvl.inference.Pipeline`, a path (or ``MedicalImage``) is prepared
        with the model directory's preprocessing (``Pipeline.prepare``); with a bare
        model, with the preprocessing the index recorded. Either way a query image is
        treated exactly as the indexed ones.
        """
        import torch

        from medvl.inference.embedding import embed_images
        from medvl.inference.pipeline import Pipeline

        net = model.model if isinstance(model, Pipeline) else model
        self.check_model(net)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            x: Any = image
        else:  # the one preprocessing path: the directory's own, or the one the index recorded
            x = (model if isinstance(model, Pipeline) else self.recorded_pipeline(net)).prepare(image)
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        dims = int((self.info.get("data") or {}).get("dims", t.ndim - 1))
        if t.ndim == dims + 1:
            t = t[None]
        return self.search_vector(embed_images(net, t)[0], k, against=against)

    def search(self, pipeline: Any, *, text: str | None = None, image: Any = None, k: int = 10,
               against: str = "image") -> SearchResult:
        """Search by text or image and say whether the query is outside the model's training data.

        Args:
            pipeline: the index's model as a :class:`medvl.inference.Pipeline` (``medvl.load``).
            text: a free-text query (checked against the training reports' vocabulary), or
            image: a path or ``MedicalImage`` (checked against the training profile).
            k: hits returned.
            against: rank cases by their ``image`` (default) or ``report`` vectors.

        Raises:
            CaseIndexError: neither or both of ``text`` and ``image``, or another model.
        """
        if (text is None) == (image is None):
            raise CaseIndexError("give a text or an image query", field="query", expected="exactly one of them")
        if text is not None:
            check = pipeline.check_text(text)
            hits = self.search_text(pipeline, text, k, against=against)
        else:
            img = pipeline.read(image)
            check = pipeline.check_image(img)
            hits = [] if not check.details.get("dims", {}).get("ok", True) else \
                self.search_image(pipeline, img, k, against=against)
        return SearchResult(hits, check.ood, check.reason)

    def recorded_pipeline(self, model: Any = None) -> Any:
        """A :class:`medvl.inference.Pipeline` of ``model`` with the preprocessing this index recorded.

        For a bare model (not loaded with ``medvl.load``): query images then go through
        ``Pipeline.prepare``, the one "preprocess a file as training did", exactly as the
        indexed studies were prepared.
        """
        from medvl.inference.pipeline import Pipeline
        from medvl.inference.preprocessing import Preprocessing

        recorded = self.info.get("preprocessing")
        if recorded:
            pre = Preprocessing.from_json(recorded, path=self.version_dir / "info.json")
        else:  # an index built before the model directories carried their preprocessing
            pre = Preprocessing.from_data_config(self.info.get("data") or {})
        return Pipeline(model, pre)

    def load_query_image(self, path: str | Path) -> np.ndarray:
        """Read and preprocess a query image as the indexed studies were (the recorded preprocessing)."""
        p = Path(path)
        if not p.exists():
            raise CaseIndexError("query image not found", path=p, field="image")
        return self.recorded_pipeline().prepare(p).numpy()

    def _hit(self, case: dict[str, Any], rank: int, score: float) -> Hit:
        ref = case["image"]
        path = os.path.normpath(self.corpus_root / ref) if self.corpus_root is not None else ref  # absolute refs stay
        return Hit(rank=rank, study_id=case["study_id"], score=score, report_text=case["report"],
                   image_path=path, labels=case["labels"], modality=case["modality"],
                   view=case["view"], split=case["split"], image_ref=ref)

    def close(self) -> None:
        self.conn.close()

    def __repr__(self) -> str:
        return f"CaseIndex({str(self.root)!r}, version={self.version_dir.name}, cases={len(self)}, dim={self.dim})"

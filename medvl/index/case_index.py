"""``CaseIndex``: open an on-disk case index and search it by text, image or vector."""

from __future__ import annotations

import hashlib
import json
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


@dataclass
class Hit:
    """One ranked case.

    Attributes:
        rank: 1-based rank.
        study_id: the study.
        score: cosine similarity to the query.
        report_text: the study's report (sections joined).
        image_path: absolute path of the study's image.
        labels: finding -> 1 / 0 / -1 as in the manifest.
        modality, view, split: from the manifest row.
    """

    rank: int
    study_id: str
    score: float
    report_text: str
    image_path: str
    labels: dict[str, int] = field(default_factory=dict)
    modality: str | None = None
    view: str | None = None
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_fingerprint(model: Any) -> str:
    """A short hash of a model's config and weights, to tell if an index fits a model.

    Hashes the config and a strided sample of every tensor's bytes (cheap for big models,
    yet any retraining changes it).
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg if isinstance(cfg, dict) else repr(cfg), sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        t = state[name].detach().reshape(-1)
        step = max(1, t.numel() // 512)
        h.update(name.encode())
        h.update(str(tuple(state[name].shape)).encode())
        # Sample on the tensor's device, copy only the sample (a GPU model stays cheap).
        h.update(t[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class CaseIndex:
    """A read-only view of one committed index version.

    Open with :meth:`open`; the version is fixed at opening, so a concurrent build that
    commits a newer version does not change what this object sees.
    """

    def __init__(self, root: Path, version: Path, config: IndexConfig) -> None:
        self.root = root
        self.version_dir = version
        self.config = config
        self.info = storage.read_info(version)
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
    def open(cls, path: str | Path, *, config: IndexConfig | dict[str, Any] | None = None) -> CaseIndex:
        """Open the live version of the index at ``path``.

        Raises:
            CaseIndexError: no index there, or its files are corrupt.
        """
        from medvl.config import from_dict

        root = Path(path)
        cfg = config if isinstance(config, IndexConfig) else from_dict(IndexConfig, dict(config or {}), where="index")
        version = storage.current_dir(root) if root.is_dir() else None
        if version is None:
            raise CaseIndexError("no case index here", path=root, expected="a folder written by `medvl index build`")
        return cls(root, version, cfg)

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
        """Cases ranked by similarity to a free-text query (by default, their images)."""
        if not isinstance(text, str) or not text.strip():
            raise CaseIndexError("empty text query", field="text", expected="a phrase or sentence")
        from medvl.eval.embed import embed_texts

        self.check_model(model)
        return self.search_vector(embed_texts(model, [text])[0], k, against=against)

    def search_image(self, model: Any, image: Any, k: int = 10, *, against: str = "image") -> list[Hit]:
        """Cases ranked by similarity to an image (a file path or a model-input tensor).

        A path is read with ``medvl.io`` and preprocessed with the data section the index
        was built with, so a query image is treated exactly as the indexed ones.
        """
        from medvl.eval.embed import embed_images

        self.check_model(model)
        x = self.load_query_image(image) if isinstance(image, (str, Path)) else image
        import torch

        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        dims = int((self.info.get("data") or {}).get("dims", t.ndim - 1))
        if t.ndim == dims + 1:
            t = t[None]
        return self.search_vector(embed_images(model, t)[0], k, against=against)

    def load_query_image(self, path: str | Path) -> np.ndarray:
        """Read and preprocess a query image as the indexed studies were."""
        from medvl.data.dataset import as_data_config
        from medvl.data.transforms import ModelInputTransform
        from medvl.io import read_image

        p = Path(path)
        if not p.exists():
            raise CaseIndexError("query image not found", path=p, field="image")
        cfg = as_data_config(dict(self.info.get("data") or {}))
        io_options = cfg.io.as_kwargs() if hasattr(getattr(cfg, "io", None), "as_kwargs") else {}
        return ModelInputTransform(cfg)(read_image(p, **io_options))  # read as the dataset reads

    def _hit(self, case: dict[str, Any], rank: int, score: float) -> Hit:
        return Hit(rank=rank, study_id=case["study_id"], score=score, report_text=case["report"],
                   image_path=case["image"], labels=case["labels"], modality=case["modality"],
                   view=case["view"], split=case["split"])

    def close(self) -> None:
        self.conn.close()

    def __repr__(self) -> str:
        return f"CaseIndex({str(self.root)!r}, version={self.version_dir.name}, cases={len(self)}, dim={self.dim})"

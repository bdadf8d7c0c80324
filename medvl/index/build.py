"""``build_index``: embed a manifest's studies into a case index, incrementally and atomically."""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import CaseIndexError
from medvl.index import metadata, storage
from medvl.index.case_index import CaseIndex, model_fingerprint
from medvl.index.config import IndexConfig
from medvl.index.vectors import build_approx, faiss_available, read_approx, write_approx

log = logging.getLogger(__name__)


def _data_section(data_cfg: Any) -> dict[str, Any]:
    if data_cfg is None:
        return {}
    if isinstance(data_cfg, dict):
        return dict(data_cfg)
    from medvl.config import to_dict

    return dict(to_dict(data_cfg))


def _want_approx(cfg: IndexConfig, n: int) -> bool:
    if cfg.approximate == "never":
        return False
    if cfg.approximate == "always":
        if not faiss_available():
            raise CaseIndexError("index.approximate is 'always' but faiss is not installed",
                                 field="index.approximate", expected="pip install faiss-cpu, or 'auto'")
        return True
    return faiss_available() and n >= cfg.approximate_min_vectors


def _embed_rows(model: Any, rows: list[Any], manifest_path: Path, staged: Path, data_cfg: dict[str, Any],
                progress: bool) -> tuple[Any, list[dict[str, Any]]]:
    """Embed the given manifest rows through the data room's loader.

    The rows are written to a temporary manifest (image paths made absolute) so the
    loader sees exactly the studies to add and nothing else.
    """
    from medvl.data.manifest import resolve_path, write_manifest
    from medvl.inference.embedding import embed_split

    tmp_manifest = staged / "to_add.jsonl"
    payload = []
    for r in rows:
        d = r.to_json()
        d["image"] = str(resolve_path(manifest_path, r.image))
        d["annotations"] = []  # masks are not needed to index, and their relative paths would break
        payload.append(d)
    write_manifest(tmp_manifest, payload)
    try:
        emb = embed_split(model, tmp_manifest, None, data_cfg, with_text=True, progress=progress)
    finally:
        tmp_manifest.unlink(missing_ok=True)
    return emb, emb.skipped


def build_index(
    model: Any,
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    data_cfg: Any = None,
    config: IndexConfig | dict[str, Any] | None = None,
    rebuild: bool = False,
    model_dir: str | Path | None = None,
) -> CaseIndex:
    """Embed a manifest's studies (images and reports) into the case index at ``out_dir``.

    When ``out_dir`` already holds an index built with the same model, only studies whose
    ids are not in it are embedded and appended (incremental). Every write makes a new
    version and switches to it atomically; if the build fails or is interrupted, the
    previous version stays live.

    Args:
        model: a :class:`medvl.inference.Pipeline` (``medvl.load(dir)``: its own
            preprocessing and model directory are used and recorded), or a bare
            ``MedVLModel`` indexed with ``data_cfg`` as given.
        manifest_path: the manifest.
        out_dir: the index folder (created when missing).
        split: index one split only; ``None`` indexes every split.
        data_cfg: the ``data`` section (as in training); it is stored in the index so
            query images are preprocessed the same way. With a pipeline, ``None`` uses
            its own, and explicit settings must agree with its preprocessing.
        config: the ``index`` section.
        rebuild: ignore an existing index and build from scratch.
        model_dir: the model's folder, recorded so ``medvl index search`` can load it.

    Returns:
        the opened index (its live version).

    Raises:
        CaseIndexError: the existing index was built with another model (pass ``rebuild``),
            another build holds the lock, or no study could be embedded.
    """
    from medvl.config import from_dict
    from medvl.data.manifest import read_manifest
    from medvl.inference.pipeline import Pipeline

    cfg = config if isinstance(config, IndexConfig) else from_dict(IndexConfig, dict(config or {}), where="index")
    root = Path(out_dir)
    manifest_path = Path(manifest_path)
    preprocessing = None
    if isinstance(model, Pipeline):
        pipe = model
        data_cfg = pipe.data_config if data_cfg is None else pipe.preprocessing.apply_to(data_cfg)
        preprocessing = pipe.preprocessing.to_json()
        model_dir = model_dir or pipe.model_dir
        fingerprint = pipe.model_id
        model = pipe.model
    else:
        fingerprint = model_fingerprint(model)
    data = _data_section(data_cfg)
    if cfg.batch_size:
        data["batch_size"] = cfg.batch_size
    if hasattr(model, "eval"):
        model.eval()

    with storage.writer_lock(root):
        old_dir = None if rebuild else storage.current_dir(root)
        old_info: dict[str, Any] = storage.read_info(old_dir) if old_dir else {}
        existing: set[str] = set()
        if old_dir is not None:
            if old_info.get("model", {}).get("fingerprint") != fingerprint:
                raise CaseIndexError("the index was built with another model", path=root, field="model",
                                     expected="the same model, or rebuild (--rebuild)")
            conn = metadata.connect(old_dir / "cases.sqlite", readonly=True)
            existing = set(metadata.study_ids(conn))
            conn.close()
        from medvl.data.dataset import as_data_config

        dims = as_data_config(dict(data)).dims  # the loader keeps only these rows
        rows = [r for r in read_manifest(manifest_path, split=split) if r.study_id not in existing and r.dims == dims]
        if not rows:
            if old_dir is None:
                raise CaseIndexError("no study to index", path=manifest_path, field="split",
                                     expected="rows of the chosen split whose dims match data.dims")
            return CaseIndex.open(root, config=cfg)
        by_id = {r.study_id: r for r in rows}

        with storage.staging_dir(root) as staged:
            emb, skipped = _embed_rows(model, rows, manifest_path, staged, data, cfg.progress)
            if len(emb) == 0:
                if old_dir is None:
                    raise CaseIndexError(f"none of {len(rows)} studies could be embedded", path=manifest_path,
                                         expected="readable images (see the skipped list)")
                log.warning("none of %d new studies could be embedded; index left unchanged: %s", len(rows),
                            "; ".join(f"{r['study_id']}: {r['error']}" for r in skipped[:5]))
                return CaseIndex.open(root, config=cfg)
            model_info = {"fingerprint": fingerprint, "config": getattr(model, "config", None),
                          "dir": str(Path(model_dir).resolve()) if model_dir else old_info.get("model", {}).get("dir")}
            # Image paths are stored relative to the corpus root (the first manifest's folder),
            # and the root relative to the index: a corpus moved with its index keeps working,
            # one moved alone is found again with CaseIndex.open(..., corpus_root=), and no
            # absolute path (with a user or patient name in it) is kept in the index.
            corpus_rel = old_info.get("corpus_root") or _relpath(manifest_path.parent, root)
            corpus = Path(os.path.abspath(root / corpus_rel))
            history = {"manifest": _relpath(manifest_path, corpus), "split": split, "skipped": skipped}
            _write_version(root, staged, old_dir, old_info, emb.image, emb.text,
                           [_case(by_id[s], manifest_path, corpus) for s in emb.study_ids], cfg,
                           model_info=model_info, data=data, history=history,
                           preprocessing=preprocessing or old_info.get("preprocessing"), corpus_root=corpus_rel)
    return CaseIndex.open(root, config=cfg)


def _relpath(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (both made absolute without resolving links), POSIX style."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(start))).as_posix()


def _case(row: Any, manifest_path: Path, corpus: Path) -> dict[str, Any]:
    """What the index stores of a manifest row: never the patient id, nor an absolute path."""
    from medvl.data.manifest import resolve_path

    return {"study_id": row.study_id, "split": row.split, "modality": row.modality, "dims": row.dims,
            "view": row.view, "image": _relpath(resolve_path(manifest_path, row.image), corpus),
            "report": row.report_text, "labels": dict(row.labels)}


def _approx_files(cfg: IndexConfig, staged: Path, old_dir: Path | None, old_info: dict[str, Any], start: int,
                  new: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Build (or extend) the approximate indexes when the corpus calls for them."""
    if not _want_approx(cfg, n):
        return {}
    out: dict[str, Any] = {}
    old_approx = old_info.get("approximate") or {}
    for t in storage.TARGETS:
        entry = old_approx.get(t)
        rows = np.ascontiguousarray(new[t], dtype=np.float32)
        trained = int((entry or {}).get("trained_count", 0))
        if (entry and old_dir is not None and entry.get("kind") == cfg.kind and entry.get("count") == start
                and n <= 2 * trained):
            # Extend the trained index with the new rows instead of re-clustering everything;
            # past twice the training size the IVF cells no longer fit the data, so retrain.
            index = read_approx(old_dir / entry["file"])
            if len(rows):
                index.add(rows)
        else:
            index = build_approx(np.load(staged / f"{t}.npy", mmap_mode="r"), cfg.approx_params)
            trained = n
        write_approx(index, staged / f"{t}.faiss")
        out[t] = {"kind": cfg.kind, "file": f"{t}.faiss", "count": n, "trained_count": trained}
    return out


def _write_version(
    root: Path, staged: Path, old_dir: Path | None, old_info: dict[str, Any], image: np.ndarray,
    report: np.ndarray, cases: list[dict[str, Any]], cfg: IndexConfig, *, model_info: dict[str, Any],
    data: dict[str, Any], history: dict[str, Any], preprocessing: dict[str, Any] | None = None,
    corpus_root: str | None = None,
) -> Path:
    """Stage old + new vectors, metadata and approximate indexes, then commit the version.

    The caller holds the writer lock and owns ``staged``.
    """
    n_new = len(cases)
    dim = int(image.shape[1]) if n_new else int(old_info.get("dim", 0))
    start = int(old_info.get("count", 0))
    if old_dir is not None and n_new and dim != int(old_info["dim"]):
        raise CaseIndexError(f"new embeddings have dimension {dim}", path=root, expected=f"{old_info['dim']}")
    new: dict[str, np.ndarray] = {}
    for t, vecs in (("image", image), ("report", report)):
        new[t] = np.asarray(vecs, np.float32).reshape(n_new, dim) if n_new else np.zeros((0, dim), np.float32)
        storage.append_vectors(old_dir / f"{t}.npy" if old_dir else None, new[t], staged / f"{t}.npy")
    if old_dir:
        shutil.copyfile(old_dir / "cases.sqlite", staged / "cases.sqlite")
    conn = metadata.connect(staged / "cases.sqlite")
    try:
        metadata.insert_cases(conn, start, cases)
    finally:
        conn.close()
    n = start + n_new
    approx = _approx_files(cfg, staged, old_dir, old_info, start, new, n)
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "added": n_new, **history}
    storage.write_info(staged, {
        "format": storage.FORMAT,
        "count": n,
        "dim": dim,
        "model": model_info,
        "data": data,
        "preprocessing": preprocessing,
        "approximate": approx,
        "corpus_root": corpus_root or old_info.get("corpus_root"),
        "history": list(old_info.get("history", [])) + [entry],
    })
    return storage.commit(root, staged, keep_versions=cfg.keep_versions)


def add_embeddings(
    out_dir: str | Path,
    image: np.ndarray,
    report: np.ndarray,
    cases: list[dict[str, Any]],
    *,
    model_info: dict[str, Any] | None = None,
    data_cfg: Any = None,
    config: IndexConfig | dict[str, Any] | None = None,
) -> CaseIndex:
    """Append precomputed embeddings and their cases to an index (created when missing).

    For embeddings computed elsewhere (a GPU job, a benchmark). Each case is a mapping with
    ``study_id``, ``image`` and ``report`` (and optionally ``split``, ``modality``,
    ``dims``, ``view``, ``labels``); never a patient identifier. Studies already indexed
    are refused.

    Args:
        out_dir: the index folder.
        image, report: ``(N, D)`` embeddings (normalised here).
        cases: N case mappings, in the same order.
        model_info: recorded as the index's model (``fingerprint`` is checked on later adds).
        data_cfg: the data section queries should be preprocessed with.
        config: the ``index`` section.

    Raises:
        CaseIndexError: shapes disagree, a study id is already indexed or repeated, or the
            model fingerprint differs from the index's.
    """
    from medvl.config import from_dict
    from medvl.index.vectors import normalize_rows

    cfg = config if isinstance(config, IndexConfig) else from_dict(IndexConfig, dict(config or {}), where="index")
    root = Path(out_dir)
    image, report = normalize_rows(image), normalize_rows(report)
    if image.shape != report.shape or image.ndim != 2 or image.shape[0] != len(cases):
        raise CaseIndexError(f"image {image.shape}, report {report.shape} and {len(cases)} cases disagree",
                             field="embeddings", expected="(N, D) each, N = number of cases")
    ids = [str(c.get("study_id", "")) for c in cases]
    if len(set(ids)) != len(ids) or not all(ids):
        raise CaseIndexError("study ids must be unique and non-empty", field="study_id")
    if any("patient_id" in c for c in cases):
        raise CaseIndexError("cases must not carry patient identifiers", field="patient_id",
                             expected="study_id, split, modality, dims, view, image, report, labels")
    model_info = dict(model_info or {})
    with storage.writer_lock(root):
        old_dir = storage.current_dir(root)
        old_info: dict[str, Any] = storage.read_info(old_dir) if old_dir else {}
        if old_dir is not None:
            want = old_info.get("model", {}).get("fingerprint")
            if want != model_info.get("fingerprint", want):
                raise CaseIndexError("the embeddings come from another model", path=root, field="model")
            conn = metadata.connect(old_dir / "cases.sqlite", readonly=True)
            dup = set(metadata.study_ids(conn)) & set(ids)
            conn.close()
            if dup:
                raise CaseIndexError(f"{len(dup)} studies already indexed (e.g. {sorted(dup)[0]})", path=root,
                                     field="study_id")
            model_info = {**old_info.get("model", {}), **model_info}
        with storage.staging_dir(root) as staged:
            _write_version(root, staged, old_dir, old_info, image, report, list(cases), cfg,
                           model_info=model_info,
                           data=_data_section(data_cfg) if data_cfg is not None else old_info.get("data", {}),
                           history={"source": "add_embeddings"}, preprocessing=old_info.get("preprocessing"))
    return CaseIndex.open(root, config=cfg)

"""``medvl embed``: image and/or report embeddings of a manifest, a folder or a DICOM series, to Parquet.

The output is a folder of Parquet shards (``part-00000.parquet``...), one row per item:

| column | what |
|---|---|
| ``item_id`` | the row's key: the manifest study id, or the DICOM SOP / Series Instance UID (plus ``~`` and a hash of the relative path for a later file with the same UID), or a hash of the file's relative path |
| ``study_id`` | manifest study id, DICOM Study Instance UID, or the item id |
| ``series_uid``, ``instance_uid`` | DICOM Series / SOP Instance UID where known, else null |
| ``split`` | the manifest split (null for folders) |
| ``model_id`` | the model's fingerprint (as indexes record it) |
| ``image_embedding``, ``report_embedding`` | unit-norm float32 lists, null when not asked for / no report |

``pyarrow.parquet.read_table(out)`` (or pandas) reads the folder as one table; the
``_embed.json`` (what was asked, by which model, progress) and ``_skipped.jsonl`` (items
that could not be embedded, with the error) sit next to the shards, named so Parquet
readers skip them. No file path or patient identifier is written. Each shard is written
atomically: an interrupted run keeps every finished shard and ``--resume`` continues
after them, skipping recorded failures too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medvl.atomic import atomic_path, write_text_atomic
from medvl.errors import ConfigError, MedvlError

FORMAT = "medvl-embeddings"
FORMAT_VERSION = 1
META_NAME = "_embed.json"
SKIPPED_NAME = "_skipped.jsonl"
#: items per Parquet shard (a shard is the unit of resume)
SHARD_SIZE = 256
WHAT = ("image", "report")


@dataclass
class Item:
    """One thing to embed."""

    item_id: str
    study_id: str
    path: Path | None
    split: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None
    report: dict[str, str] | None = None
    skip_reason: str | None = None


def _hashed(rel: str) -> str:
    return "file-" + hashlib.sha1(rel.encode()).hexdigest()[:16]


def manifest_items(manifest: str | Path, split: str | None, dims: int) -> list[Item]:
    """The manifest's rows (of one split), in order; rows of the other dimensionality are skipped items."""
    from medvl.data.manifest import read_manifest, resolve_path

    out = []
    for r in read_manifest(manifest, split=split):
        item = Item(item_id=r.study_id, study_id=r.study_id, path=resolve_path(manifest, r.image), split=r.split,
                    report=dict(r.report))
        if r.dims != dims:
            item.skip_reason = f"a {r.dims}D study, the model takes {dims}D images"
        out.append(item)
    return out


def _dicom_uids(path: Path) -> tuple[str | None, str | None, str | None]:
    """(study, series, instance) UIDs of a DICOM file, or Nones when it is not one."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - not DICOM: the item is identified by its path hash
        return None, None, None
    return (str(ds.get("StudyInstanceUID") or "") or None, str(ds.get("SeriesInstanceUID") or "") or None,
            str(ds.get("SOPInstanceUID") or "") or None)


_HIDDEN = re.compile(r"(^|/)\.")


def folder_items(folder: str | PathLike[str], dims: int) -> list[Item]:
    """Image files under ``folder`` (recursively). A 2D model gets one item per file; a 3D
    model one per NIfTI file and one per folder of DICOM files (a series)."""
    from medvl.io.reader import NIFTI_SUFFIXES, RASTER_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError("folder not found", path=root, field="--folder", expected="a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _HIDDEN.search(str(p.relative_to(root))))
    out: list[Item] = []
    series_dirs: dict[Path, None] = {}
    for p in files:
        rel = str(p.relative_to(root))
        name = p.name.lower()
        if name.endswith((*NIFTI_SUFFIXES, *RASTER_SUFFIXES)):
            out.append(Item(item_id=_hashed(rel), study_id=_hashed(rel), path=p))
            continue
        study, series, instance = _dicom_uids(p)
        if instance is None and series is None:
            continue  # neither an image format medvl reads nor DICOM: not an item
        if dims == 3:
            series_dirs.setdefault(p.parent)
        else:
            out.append(Item(item_id=instance or _hashed(rel), study_id=study or _hashed(rel), path=p,
                            series_uid=series, instance_uid=instance))
    for d in series_dirs:
        out += series_items(d, dims)
    return _unique_ids(out, root)


def _unique_ids(items: list[Item], root: Path) -> list[Item]:
    """Make ``item_id`` a key: a second file (or series folder) with the same UID as an
    earlier one (a copy, a transcoded version: pydicom's RG1_* share their SOP Instance
    UIDs) gets the UID plus a hash of its relative path. Items are in sorted path order,
    so a rerun (``--resume``) gives every file the same id again."""
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen and item.path is not None:
            rel = str(item.path.relative_to(root)) if item.path.is_relative_to(root) else item.path.name
            item.item_id = f"{item.item_id}~{_hashed(rel)[5:]}"
        seen.add(item.item_id)
    return items


def series_items(series: str | PathLike[str], dims: int) -> list[Item]:
    """A DICOM series folder: one item (a volume) for a 3D model, one per instance for a 2D one."""
    d = Path(series)
    if not d.is_dir():
        raise ConfigError("series folder not found", path=d, field="--series", expected="a folder of DICOM files")
    if dims == 2:
        return [i for i in folder_items(d, 2) if i.series_uid is not None or i.instance_uid is not None]
    first = next((p for p in sorted(d.iterdir()) if p.is_file() and _dicom_uids(p)[1]), None)
    if first is None:
        return []
    study, series_uid, _ = _dicom_uids(first)
    key = series_uid or _hashed(d.name)
    return [Item(item_id=key, study_id=study or key, path=d, series_uid=series_uid)]


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def _done_ids(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    done: set[str] = set()
    for shard in _shards(out):
        done.update(pq.read_table(shard, columns=["item_id"]).column("item_id").to_pylist())
    skipped = out / SKIPPED_NAME
    if skipped.is_file():
        done.update(json.loads(line)["item_id"] for line in skipped.read_text().splitlines() if line.strip())
    return done


def _clean_error(exc: BaseException, item: Item) -> str:
    """The error without any path (paths can carry names)."""
    text = exc.message if isinstance(exc, MedvlError) else str(exc)
    if item.path is not None:
        text = text.replace(str(item.path), "<file>")
    if isinstance(exc, MedvlError) and exc.field:
        text = f"[{exc.field}] {text}"
    return f"{type(exc).__name__}: {text}"


def embed_items(
    pipe: Any,
    items: Sequence[Item],
    out: str | PathLike[str],
    *,
    what: Sequence[str] = ("image",),
    resume: bool = False,
    batch_size: int = 16,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
    source: str = "manifest",
) -> dict[str, Any]:
    """Embed ``items`` with the pipeline's own preprocessing into Parquet shards under ``out``.

    Args:
        pipe: a :class:`~medvl.inference.Pipeline`.
        items: from :func:`manifest_items`, :func:`folder_items` or :func:`series_items`.
        out: the output folder.
        what: ``image`` and/or ``report``.
        resume: continue an interrupted run in ``out`` (same model and ``what``).
        batch_size: images per forward pass.
        shard_size: rows per Parquet shard.
        progress: show a progress bar.
        source: recorded in ``_embed.json``.

    Returns:
        the ``_embed.json`` summary (``n_written``, ``n_skipped``, ``seconds``...).

    Raises:
        ConfigError: ``out`` holds another run (without ``resume``, or of another model).
    """
    import time

    what = list(dict.fromkeys(what))
    bad = [w for w in what if w not in WHAT]
    if bad or not what:
        raise ConfigError(f"unknown embedding kind {bad[0] if bad else ''!r}", field="--what",
                          expected="image, report or image,report")
    root = Path(out)
    meta_path = root / META_NAME
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": pipe.model_id,
                            "what": what, "source": source, "n_items": len(items)}
    done: set[str] = set()
    if root.exists() and any(root.iterdir()):
        if not resume:
            raise ConfigError("the output folder is not empty", path=root, field="--out",
                              expected="a new folder, or --resume to continue the run in it")
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if old.get("model_id") != pipe.model_id or old.get("what") != what:
            raise ConfigError("the output folder holds embeddings of another model or kind", path=root,
                              field="--resume", expected=f"model {old.get('model_id')} with {old.get('what')}")
        done = _done_ids(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_path, json.dumps({**meta, "complete": False}, indent=2))
    todo = [i for i in items if i.item_id not in done]
    skipped_lines = (root / SKIPPED_NAME).read_text().splitlines() if resume and (root / SKIPPED_NAME).is_file() \
        else []
    bar = None
    if progress:
        from medvl.progress import progress as make_bar

        bar = make_bar(total=len(items), initial=len(items) - len(todo), desc="embed", unit="item")
    t0 = time.perf_counter()
    written = 0
    next_shard = len(_shards(root))
    for chunk in _chunks(todo, shard_size):
        rows, skipped = _embed_chunk(pipe, chunk, what, batch_size)
        skipped_lines += [json.dumps(s) for s in skipped]
        if rows:
            _write_shard(root / f"part-{next_shard:05d}.parquet", rows, pipe, what)
            next_shard += 1
            written += len(rows)
        # the skipped records follow the shard: a resumed run neither repeats nor loses them
        write_text_atomic(root / SKIPPED_NAME, "".join(line + "\n" for line in skipped_lines))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    total_rows = sum(_rows_in(s) for s in _shards(root))
    meta.update(complete=True, n_written=total_rows, n_skipped=len(skipped_lines), seconds_this_run=round(seconds, 2),
                items_per_s_this_run=round(len(todo) / seconds, 2) if seconds > 0 and todo else None)
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    return meta


def _rows_in(shard: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(shard).metadata.num_rows)


def _chunks(items: Sequence[Item], n: int) -> Iterator[Sequence[Item]]:
    for lo in range(0, len(items), n):
        yield items[lo:lo + n]


def _embed_chunk(pipe: Any, chunk: Sequence[Item], what: list[str], batch_size: int
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows and skipped records of one shard's items (a bad item never stops the run)."""
    import torch

    from medvl.data.text import prepare_text
    from medvl.inference.embedding import embed_images

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    ready: list[tuple[Item, Any, str | None]] = []
    for item in chunk:
        if item.skip_reason:
            skipped.append({"item_id": item.item_id, "study_id": item.study_id, "error": item.skip_reason})
            continue
        try:
            x = pipe.prepare(item.path) if "image" in what else None
            text = None
            if "report" in what and item.report:
                text = prepare_text(item.report, pipe.data_config, np.random.default_rng(0), sample=False)
        except (MedvlError, OSError, ValueError) as exc:
            skipped.append({"item_id": item.item_id, "study_id": item.study_id, "error": _clean_error(exc, item)})
            continue
        if "image" not in what and text is None:
            skipped.append({"item_id": item.item_id, "study_id": item.study_id, "error": "no report text"})
            continue
        ready.append((item, x, text))
    for lo in range(0, len(ready), batch_size):
        part = ready[lo:lo + batch_size]
        img = embed_images(pipe.model, torch.stack([x for _, x, _ in part])) if "image" in what else None
        texts = [t for _, _, t in part if t is not None]
        txt = iter(pipe.embed_texts(texts, prepared=True)) if texts else iter(())
        for j, (item, _, text) in enumerate(part):
            rows.append({
                "item_id": item.item_id, "study_id": item.study_id, "series_uid": item.series_uid,
                "instance_uid": item.instance_uid, "split": item.split,
                "image_embedding": img[j] if img is not None else None,
                "report_embedding": next(txt) if text is not None else None,
            })
    return rows, skipped


def _write_shard(path: Path, rows: list[dict[str, Any]], pipe: Any, what: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vec = pa.list_(pa.float32())

    def col(key: str) -> Any:
        return pa.array([None if r[key] is None else np.asarray(r[key], np.float32) for r in rows], type=vec)

    table = pa.table({
        "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
        "study_id": pa.array([r["study_id"] for r in rows], pa.string()),
        "series_uid": pa.array([r["series_uid"] for r in rows], pa.string()),
        "instance_uid": pa.array([r["instance_uid"] for r in rows], pa.string()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "model_id": pa.array([pipe.model_id] * len(rows), pa.string()),
        "image_embedding": col("image_embedding"),
        "report_embedding": col("report_embedding"),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))

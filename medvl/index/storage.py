"""On-disk layout of a case index: immutable versions switched by an atomic pointer.

::

    IDX/
      CURRENT            name of the live version ("v000003"), replaced atomically
      v000003/
        index.json       format, counts, dimension, model fingerprint, data section, history
        image.npy        (N, D) float32 unit-norm image embeddings
        report.npy       (N, D) float32 unit-norm report embeddings
        cases.sqlite     case metadata, row ``position`` = vector row
        image.faiss      optional approximate indexes
        report.faiss
      .lock              held by a writer (one build at a time)

A writer builds a whole new version in a hidden temporary folder, fsyncs it, renames it
to ``vNNNNNN`` and only then replaces ``CURRENT``. A reader resolves ``CURRENT`` once
and reads an immutable folder, so an interrupted or failed build leaves the previous
version live and intact, and readers never see a half-written index.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medvl.atomic import write_text_atomic
from medvl.errors import CaseIndexError

FORMAT = 1
CURRENT = "CURRENT"
INFO = "index.json"
TARGETS = ("image", "report")
_VERSION = re.compile(r"^v(\d{6})$")


def current_dir(root: Path) -> Path | None:
    """The live version folder, or None when ``root`` holds no index yet."""
    pointer = root / CURRENT
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not _VERSION.match(name) or not (root / name).is_dir():
        raise CaseIndexError(f"CURRENT names {name!r}, which is not a version folder", path=pointer,
                             expected="vNNNNNN naming an existing folder")
    return root / name


def versions(root: Path) -> list[Path]:
    """Committed version folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)), key=lambda p: p.name)


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on ``root/.lock``: a second concurrent build fails fast."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".lock", "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CaseIndexError("another build of this index is running", path=root) from None
        yield
    finally:
        fh.close()


@contextlib.contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``root`` for a version under construction.

    Removed on the way out unless :func:`commit` moved it into place.
    """
    for stale in root.glob(".tmp-*"):  # left by a build that was killed; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, staged: Path, keep_versions: int = 2) -> Path:
    """Move a staged version into place, switch ``CURRENT`` to it, prune old versions."""
    existing = versions(root)
    number = int(existing[-1].name[1:]) + 1 if existing else 1
    final = root / f"v{number:06d}"
    _fsync_tree(staged)
    os.replace(staged, final)
    write_text_atomic(root / CURRENT, final.name + "\n")
    for old in versions(root)[:-keep_versions]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_info(version: Path) -> dict[str, Any]:
    """The version's ``index.json``."""
    path = version / INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseIndexError(f"index description unreadable ({exc})", path=path) from None
    if info.get("format") != FORMAT:
        raise CaseIndexError(f"index format {info.get('format')!r}", path=path, expected=f"format {FORMAT}")
    return info


def write_info(version: Path, info: dict[str, Any]) -> None:
    (version / INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def append_vectors(old: Path | None, new: np.ndarray, target: Path, block: int = 65536) -> int:
    """Write ``old`` rows (if any) then ``new`` rows to ``target`` (.npy) in blocks; return rows."""
    new = np.asarray(new, dtype=np.float32)
    old_arr = np.load(old, mmap_mode="r") if old is not None else None
    n_old = 0 if old_arr is None else old_arr.shape[0]
    d = new.shape[1] if new.size else (old_arr.shape[1] if old_arr is not None else 0)
    if old_arr is not None and new.size and old_arr.shape[1] != new.shape[1]:
        raise CaseIndexError(f"new vectors have dimension {new.shape[1]}", path=old,
                             expected=f"{old_arr.shape[1]} as the index")
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(n_old + new.shape[0], d))
    for lo in range(0, n_old, block):
        assert old_arr is not None  # n_old > 0
        hi = min(lo + block, n_old)
        out[lo:hi] = old_arr[lo:hi]
    out[n_old:] = new
    out.flush()
    del out
    return n_old + new.shape[0]

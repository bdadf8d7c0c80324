"""Atomic writes: a reader never sees a half-written file or folder, a kill never loses one.

A file is written to a temporary sibling, fsynced and renamed over the target: one
``rename`` is atomic, so the target is either the old or the new file.

A folder (a checkpoint, a model directory) cannot be swapped in one portable rename
when the target exists. It is replaced in steps, each of which leaves a state that
:func:`recover_dir` repairs:

1. the new version is written in a staging folder, ``.NAME.staging-XXXX/writing/NAME``,
   and fsynced; renaming it to ``.NAME.staging-XXXX/NAME`` marks it complete;
2. the current ``NAME`` is renamed into the staging folder (``.NAME.staging-XXXX/old``);
3. the complete new version is renamed to ``NAME``;
4. the staging folder (with the old version) is deleted.

A kill between any two steps leaves at least one complete version: in ``NAME`` or in
a staging folder. :func:`recover_dir` puts the newest complete version at ``NAME``
(a complete new version beats ``NAME``, which beats a parked old one) and deletes the
rest (unfinished versions, superseded ones); it never deletes the newest complete
version. :func:`atomic_path` runs it before replacing a folder, and readers that
must find the latest version (``train --resume``) run it first. No marker file is
added inside the folder: completeness is where the folder is.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Inside a staging folder: where a version is written, and where the replaced one waits.
WRITING_NAME = "writing"
OLD_NAME = "old"
#: Staging folders are ``.NAME`` + this + a random suffix, next to ``NAME``.
STAGING_INFIX = ".staging-"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (folder entries, i.e. renames, need the folder synced)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some file systems cannot open folders; nothing more can be done there
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. folders on some network file systems
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _is_legacy_staging(name: str, target: str) -> bool:
    """The previous scheme's ``.NAME.XXXXXXXX`` (mkdtemp): whether its ``NAME`` was complete is unknown."""
    return re.fullmatch(rf"\.{re.escape(target)}\.[a-z0-9_]{{8}}", name) is not None


def _is_staging(name: str, target: str) -> bool:
    """A staging folder of ``target``: this module's, or the previous scheme's
    ``.NAME.XXXXXXXX`` and ``.NAME.old-PID`` folders."""
    return name.startswith((f".{target}{STAGING_INFIX}", f".{target}.old-")) or _is_legacy_staging(name, target)


def _staging_roots(target: Path) -> list[Path]:
    """Staging folders of a folder ``target``: empty ones and those holding a folder
    version (a staging folder holding a *file* belongs to a file write and is left alone)."""
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for p in entries:
        if not _is_staging(p.name, target.name) or not p.is_dir() or p.is_symlink():
            continue
        if not (p / target.name).is_file() and not (p / WRITING_NAME / target.name).is_file():
            out.append(p)
    return sorted(out)


# Rank of a version: a complete new one (step 1 done) beats the target, which beats a parked old one.
_OLD, _TARGET, _NEW = 0, 1, 2


def _candidates(target: Path) -> list[tuple[Path, tuple[int, float]]]:
    """Every complete version of ``target`` on disk with its rank ``(kind, staging time)``.

    Only complete versions are ever renamed to ``NAME``, ``old`` or a staging folder's
    ``NAME`` (the previous scheme's ``.NAME.old-PID`` too); one still under ``writing``
    is not a candidate.
    """
    out: list[tuple[Path, tuple[int, float]]] = []
    if target.is_dir():
        out.append((target, (_TARGET, 0.0)))
    for root in _staging_roots(target):
        if root.name.startswith(f".{target.name}.old-"):  # the previous scheme's parked version
            out.append((root, (_OLD, 0.0)))
            continue
        new, old = root / target.name, root / OLD_NAME
        if new.is_dir() and not _is_legacy_staging(root.name, target.name):
            out.append((new, (_NEW, root.stat().st_mtime)))
        if old.is_dir():
            out.append((old, (_OLD, 0.0)))
    return out


def recover_dir(target: str | os.PathLike[str]) -> Path | None:
    """Repair what an interrupted folder replacement left; return ``target`` or None.

    The newest complete version is put at ``target``; unfinished and superseded
    versions and their staging folders are deleted. Safe to call at any time when no writer is running, and itself safe to
    interrupt (it uses the same steps as a replacement).

    Returns:
        ``target`` when a complete version is there afterwards, else None.
    """
    target = Path(target)
    found = _candidates(target)
    if found:
        best = max(found, key=lambda c: c[1])[0]
        if best != target:
            if target.is_dir():
                # park the superseded target in a staging folder of its own, as step 2 does
                park = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))
                os.replace(target, park / OLD_NAME)
            os.replace(best, target)
            fsync_path(target.parent)
    for root in _staging_roots(target):
        shutil.rmtree(root, ignore_errors=True)
    return target if target.is_dir() else None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success put it at ``target``.

    Works for a file or a folder written at the yielded path. A folder replaces an
    existing one by the steps in the module docstring: a kill at any point leaves a
    state from which :func:`recover_dir` restores the newest complete version. If the
    body raises, nothing changes at ``target`` and the temporary path is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() and _candidates(target):
        recover_dir(target)  # finish or undo an earlier interrupted folder replacement first
    root = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))
    (root / WRITING_NAME).mkdir()
    tmp = root / WRITING_NAME / target.name
    try:
        yield tmp
        if tmp.is_dir():
            _commit_dir(target, tmp, root)
        else:
            if tmp.is_file():
                fsync_path(tmp)
            os.replace(tmp, target)
            fsync_path(target.parent)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _commit_dir(target: Path, tmp: Path, root: Path) -> None:
    """Steps 1 (mark complete) to 3 (rename into place); the caller deletes ``root``."""
    _fsync_tree(tmp)  # every file is on disk before the version is marked complete
    done = root / target.name
    os.replace(tmp, done)
    fsync_path(root)
    if target.exists():
        if not target.is_dir():
            raise NotADirectoryError(f"{target} exists and is not a folder")
        os.replace(target, root / OLD_NAME)
    os.replace(done, target)
    fsync_path(target.parent)


def check_output_folder(path: str | os.PathLike[str], *, field: str = "--out") -> Path:
    """Check that ``path`` can be (or already is) a folder before any work is done.

    Raises:
        ConfigError: ``path``, or a folder above it, exists and is not a folder (a file
            where an output folder should go would otherwise surface as a
            ``FileExistsError`` traceback after the work).
    """
    from medvl.errors import ConfigError

    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                what = "the output" if q == p else f"{q}, a folder above the output,"
                raise ConfigError(f"{what} exists and is not a folder", path=p, field=field,
                                  expected="a new or existing folder")
            break
    return p


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)

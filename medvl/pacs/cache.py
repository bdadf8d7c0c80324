"""The ingest cache: which source instances are already fetched and de-identified, which
studies are complete.

A SQLite file in the output's state folder (``DIR/.medvl-pacs/state.sqlite``). Keys are
keyed hashes (:func:`medvl.pacs.identity.keyed`) of source UIDs, values are paths of the
de-identified files relative to ``DIR``; nothing in it names a patient or a source UID.
Every instance is recorded once its file is on disk (written atomically), so an
interrupted ingest resumes where it stopped and never fetches an instance twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (key TEXT PRIMARY KEY, path TEXT NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (key TEXT PRIMARY KEY, ref TEXT NOT NULL, row TEXT NOT NULL);
"""


class IngestCache:
    """Thread-safe record of fetched instances and completed studies.

    Args:
        root: the output folder (file paths are relative to it).
        state_dir: where ``state.sqlite`` lives.
    """

    def __init__(self, root: str | Path, state_dir: str | Path) -> None:
        self.root = Path(root)
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state / "state.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A record only says a file is on disk, and instance() checks that it still is: a
        # record lost with the last transactions at a power cut means a refetch, nothing
        # worse, so commits need not wait for an fsync each (NORMAL is still crash-safe).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def instance(self, key: str) -> Path | None:
        """The de-identified file of instance ``key`` when it is recorded *and* still on disk."""
        with self._lock:
            row = self._db.execute("SELECT path FROM instances WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        path = self.root / row[0]
        return path if path.is_file() else None

    def add_instance(self, key: str, path: Path) -> None:
        """Record a written file (after the atomic rename)."""
        rel = path.relative_to(self.root).as_posix()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?)", (key, rel, path.stat().st_size))

    def study(self, key: str) -> dict[str, Any] | None:
        """The manifest row of a completed study, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT row FROM studies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def add_study(self, key: str, ref: str, row: dict[str, Any]) -> None:
        """Record a study as complete with its manifest row."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO studies VALUES (?, ?, ?)", (key, ref, json.dumps(row)))

    def counts(self) -> dict[str, int]:
        """Number of recorded instances and complete studies."""
        with self._lock:
            n_i = self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            n_s = self._db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        return {"instances": int(n_i), "studies": int(n_s)}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

"""Case metadata in SQLite: one row per indexed study, aligned with the vector rows.

Row ``position`` of table ``cases`` is the study's row in the vector files. The table
holds what a hit shows (study id, modality, view, image path, report text, labels) and
**no patient identifier**: not the pseudonymous patient id, not names or dates.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medvl.errors import CaseIndexError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    position INTEGER PRIMARY KEY,
    study_id TEXT NOT NULL UNIQUE,
    split TEXT,
    modality TEXT,
    dims INTEGER,
    view TEXT,
    image TEXT NOT NULL,
    report TEXT NOT NULL,
    labels TEXT NOT NULL
);
"""
COLUMNS = ("position", "study_id", "split", "modality", "dims", "view", "image", "report", "labels")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the metadata database (read-only through a URI when asked)."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), check_same_thread=False)
            conn.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise CaseIndexError(f"cannot open case metadata: {exc}", path=path) from None
    return conn


def insert_cases(conn: sqlite3.Connection, start: int, cases: Iterable[dict[str, Any]]) -> int:
    """Insert cases at positions ``start, start+1, ...`` in one transaction; return the count."""
    rows = [
        (start + i, c["study_id"], c.get("split"), c.get("modality"), c.get("dims"), c.get("view"),
         c["image"], c["report"], json.dumps(c.get("labels") or {}, sort_keys=True))
        for i, c in enumerate(cases)
    ]
    with conn:  # one transaction: all rows or none
        conn.executemany(f"INSERT INTO cases ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    return len(rows)


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, row, strict=True))
    d["labels"] = json.loads(d["labels"])
    return d


def fetch_positions(conn: sqlite3.Connection, positions: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Cases at the given vector positions, keyed by position."""
    if not positions:
        return {}
    marks = ",".join("?" * len(positions))
    cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM cases WHERE position IN ({marks})",
                       [int(p) for p in positions])
    return {r[0]: _row_dict(r) for r in cur.fetchall()}


def fetch_study(conn: sqlite3.Connection, study_id: str) -> dict[str, Any] | None:
    """The case of one study id, or None."""
    r = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM cases WHERE study_id = ?", (study_id,)).fetchone()
    return _row_dict(r) if r else None


def study_ids(conn: sqlite3.Connection) -> list[str]:
    """Every study id in position order."""
    return [r[0] for r in conn.execute("SELECT study_id FROM cases ORDER BY position")]


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

"""The light half of the backend: the index's cases and their images, without the model.

Opening it reads the index's SQLite metadata and imports ``medvl.io`` only (no torch,
no MONAI), so the page can show its first image within a second or two of a cold
start while the model loads (see :mod:`medvl_viewer.library`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from medvl_viewer.backend import Case, CaseSummary, to_case

T = TypeVar("T")

#: Rows read from SQLite per query when the case list is loaded.
_CHUNK = 5000


class LRU:
    """A small thread-safe memo: Streamlit serves each browser session in its own thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]  # type: ignore[no-any-return]
        value = make()  # outside the lock: a slow read must not block other sessions
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


class IndexCatalogue:
    """Cases of a case index, found by study id or finding, and their images for display.

    Args:
        index_dir: a folder written by ``medvl index build``.

    Raises:
        CaseIndexError: no index there, or its files are corrupt.
    """

    def __init__(self, index_dir: Path) -> None:
        from medvl.index import CaseIndex, metadata

        self.index = CaseIndex.open(index_dir)
        self._lock = threading.Lock()  # one SQLite connection for every session's thread
        n = len(self.index)
        rows: list[CaseSummary] = []
        with self._lock:
            for lo in range(0, n, _CHUNK):
                got = metadata.fetch_positions(self.index.conn, list(range(lo, min(n, lo + _CHUNK))))
                rows.extend(
                    CaseSummary(r["study_id"], r.get("modality"), r.get("view"),
                                tuple(sorted(k for k, v in (r.get("labels") or {}).items() if v == 1)))
                    for _, r in sorted(got.items())
                )
        self._rows = rows
        self._images = LRU(8)  # volumes can be large: keep few
        data = dict(self.index.info.get("data") or {})
        self._dims = int(data.get("dims", 2))
        self._io = self._io_options(data)

    @staticmethod
    def _io_options(data: dict[str, Any]) -> dict[str, Any]:
        """Reader options of the index's data section (as the indexed studies were read)."""
        from medvl.config import from_dict
        from medvl.data.config import DataConfig

        try:
            return dict(from_dict(DataConfig, data, where="data").io.as_kwargs())
        except Exception:  # noqa: BLE001 - an older index's data section: read with defaults
            return {}

    # -- the case list ---------------------------------------------------------------
    def size(self) -> int:
        return len(self._rows)

    def modalities(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._rows:
            key = (r.modality or "unknown").upper()
            out[key] = out.get(key, 0) + 1
        return out

    def dims(self) -> int:
        return self._dims

    def find(self, text: str, page: int, per_page: int) -> tuple[list[CaseSummary], int]:
        rows = self._rows
        text = (text or "").strip()
        if text:
            from medvl.data.assertions import find_assertions

            wanted = {a.finding for a in find_assertions(text) if a.status == "present"}
            needle = text.lower()
            rows = [r for r in rows if needle in r.study_id.lower() or (wanted and wanted <= set(r.positives))]
        start = max(page, 0) * per_page
        return rows[start:start + per_page], len(rows)

    def case(self, study_id: str) -> Case:
        with self._lock:
            return to_case(self.index.get(study_id))

    # -- images ----------------------------------------------------------------------
    def read_image(self, image_path: Path, frame: int | None = None) -> Any:
        from medvl.io import read_image

        options = dict(self._io)
        if frame is not None:
            options["frame"] = frame
        return self._images.get((str(image_path), frame), lambda: read_image(image_path, **options))

    def window_presets(self, modality: str | None) -> dict[str, tuple[float, float]]:
        # The presets file holds Hounsfield-unit windows: they mean something for CT only.
        if modality != "CT":
            return {}
        from medvl.io import window_presets

        return dict(window_presets())

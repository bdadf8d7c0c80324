"""Preprocessing cache: the deterministic model input of each study, memory-mapped.

Decoding a 2000-pixel radiograph or a 300-slice CT series and resampling it costs far
more than reading a few hundred kilobytes of float16. The cache stores the output of
:class:`~medvl.data.transforms.ModelInputTransform` as one ``.npy`` file per image:

* **key** = SHA-256 of the image's identity (absolute path, size and modification
  time of the file, or of every file in a DICOM series folder; or, with
  ``cache_key: content``, the SHA-256 of the bytes) and the preprocessing signature
  (every config field that changes the output, plus a pipeline version).
  Editing a file, or changing ``image_size``/``window``/..., makes a new key; stale
  entries are simply never read again (delete the folder to reclaim space).
* **layout**: ``<cache_dir>/<signature>/<key[:2]>/<key>.npy``.
* **writes are atomic**: each writer saves to a unique temporary name in the same
  folder and ``os.replace``-s it into place, so DataLoader workers (or ranks) that
  preprocess the same study at once never expose a half-written file; the last
  rename wins and all candidates are identical.
* **reads** use ``np.load(mmap_mode="r")``: the OS page cache is shared by all worker
  processes instead of each holding a copy. A truncated or unreadable entry is treated
  as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from medvl.errors import ConfigError


def _walk_files(p: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        out.extend(Path(root) / name for name in sorted(files))
    return out


def file_identity(path: str | os.PathLike[str], mode: str = "stat") -> str:
    """Identity string of an image file or DICOM series folder.

    Args:
        path: the file or folder.
        mode: ``"stat"``: absolute path, size and modification time (free; a copy or
            ``touch`` invalidates); ``"content"``: SHA-256 of the bytes (reads the
            files, survives copies and moves, and identical files share one entry).

    Raises:
        FileNotFoundError: the path does not exist.
    """
    p = Path(path).resolve()
    files = _walk_files(p) if p.is_dir() else [p]
    if not files:
        p.stat()  # an empty folder still has to exist
    if mode == "content":
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(p)).encode() if p.is_dir() else b"")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return f"content:{h.hexdigest()}"
    parts = [str(p)]
    for f in files:
        st = f.stat()
        rel = f.relative_to(p) if p.is_dir() else ""
        parts.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


class PreprocessCache:
    """A folder of memory-mapped preprocessed arrays.

    Args:
        root: cache directory (created on first write).
        signature: preprocessing signature (``transforms.preprocess_signature``).
        dtype: stored dtype, ``"float16"`` or ``"float32"``.
        key_mode: how images are identified, ``"stat"`` or ``"content"``
            (see :func:`file_identity`).
    """

    def __init__(self, root: str | os.PathLike[str], signature: str, dtype: str = "float32",
                 key_mode: str = "stat") -> None:
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"cache dtype {dtype!r}", field="data.cache_dtype",
                              expected="float16 or float32")
        if key_mode not in ("stat", "content"):
            raise ConfigError(f"cache key {key_mode!r}", field="data.cache_key", expected="stat or content")
        self.key_mode = key_mode
        self.root = Path(root)
        self.signature = signature
        self.dtype = np.dtype(dtype)
        self.hits = 0
        self.misses = 0

    def key(self, image_path: str | os.PathLike[str]) -> str:
        """Cache key of an image under this cache's signature."""
        ident = f"{self.signature}\n{file_identity(image_path, self.key_mode)}"
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()

    def entry_path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return self.root / self.signature / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """Return the memory-mapped entry, or ``None`` on a miss (or a damaged entry)."""
        path = self.entry_path(key)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (ValueError, OSError, EOFError):
            # Truncated by a crash or foreign: recompute and overwrite.
            self.misses += 1
            return None
        if arr.dtype != self.dtype:
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def store(self, key: str, array: np.ndarray) -> np.ndarray:
        """Write ``array`` (cast to the cache dtype) atomically; return what a hit would return."""
        path = self.entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.ascontiguousarray(array, dtype=self.dtype)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return data

    def get_or_compute(self, image_path: str | os.PathLike[str], compute) -> np.ndarray:
        """Return the cached array for ``image_path`` or compute, store and return it.

        ``compute()`` is only called on a miss; its exceptions propagate (nothing is stored).
        The result always has the cache dtype, so a hit and a fresh computation agree
        bit for bit.
        """
        key = self.key(image_path)
        hit = self.load(key)
        if hit is not None:
            return hit
        return self.store(key, compute())

"""Shared pieces of the corpus recipes: table reading with column checks, label
mapping onto the medvl vocabulary, deterministic patient-level splits.

A recipe turns a corpus *as its providers distribute it* into manifest rows. Each
recipe module defines a :class:`Recipe` subclass registered in ``RECIPES``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from medvl.data.manifest import ManifestRow
from medvl.errors import DatasetRecipeError
from medvl.registry import Registry

RECIPES: Registry[type[Recipe]] = Registry("corpus recipe")

# Source label names (CheXpert / MIMIC / CT-RATE style) -> medvl vocabulary keys.
# Labels outside the vocabulary are kept under their snake_case name so nothing the
# provider labelled is lost.
VOCAB_MAP = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural_effusion",
    "pneumothorax": "pneumothorax",
    "consolidation": "consolidation",
    "lung_lesion": "nodule",
    "lung_nodule": "nodule",
    "nodule": "nodule",
    "atelectasis": "atelectasis",
    "edema": "edema",
    "support_devices": "support_device",
    "medical_material": "support_device",
    "no_finding": "no_finding",
}


def snake(name: str) -> str:
    """``'Pleural Effusion'`` -> ``'pleural_effusion'``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def map_label_name(name: str) -> str:
    """Map a provider's label column name onto the medvl vocabulary (snake_case otherwise)."""
    s = snake(name)
    return VOCAB_MAP.get(s, s)


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``*.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_table(path: Path, required: Iterable[str]) -> Iterator[dict[str, str]]:
    """Yield CSV rows as dicts after checking the header holds ``required`` columns.

    Raises:
        DatasetRecipeError: the file is missing or lacks columns; names both.
    """
    if not path.is_file():
        raise DatasetRecipeError("expected file not found", path=path)
    fh = open_text(path)
    try:
        reader = csv.DictReader(fh)
        # Some providers pad header names (SIIM: "ImageId, EncodedPixels").
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetRecipeError(
                "missing column(s) " + ", ".join(missing), path=path, field=missing[0],
                expected="a header with " + ", ".join(required),
            )
        yield from reader
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DatasetRecipeError(f"cannot read table ({exc})", path=path) from None
    finally:
        fh.close()


def parse_label(value: str | None, uncertain: str = "keep") -> int | None:
    """Parse a CheXpert-style cell (``1.0``, ``0.0``, ``-1.0``, blank).

    Args:
        value: the cell text.
        uncertain: policy for ``-1``: ``keep`` (-1), ``ones`` (U-Ones -> 1),
            ``zeros`` (U-Zeros -> 0) or ``ignore`` (dropped, as unmentioned).

    Returns:
        1, 0, -1, or None when the finding is not mentioned.
    """
    if value is None:
        return None
    v = value.strip()
    if v == "":
        return None
    try:
        x = int(float(v))
    except ValueError:
        return None
    if x == -1:
        return {"keep": -1, "ones": 1, "zeros": 0, "ignore": None}[uncertain]
    return 1 if x == 1 else 0


def patient_split(patient_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), salt: str = "medvl") -> str:
    """Deterministic patient-level split from a hash of the id (stable across runs and machines)."""
    h = int(hashlib.sha1(f"{salt}:{patient_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"


def relpath(path: Path, start: Path) -> str:
    """Path of ``path`` relative to ``start`` when possible (manifests stay movable), else absolute."""
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path.resolve())


@dataclass
class PrepareOptions:
    """Options every recipe understands.

    Attributes:
        uncertain: policy for uncertain labels (``keep``, ``ones``, ``zeros``, ``ignore``).
        views: radiograph view positions to keep (``None`` = all); frontal by default.
        subset: a recipe-specific evaluation subset (``chexpert5x200``...).
        check_files: stat every referenced image (slow on network file systems).
        seed: seed for sampled subsets.
        csv_name: for the ``folder`` recipe, the CSV under the root.
    """

    uncertain: str = "keep"
    views: tuple[str, ...] | None = ("PA", "AP")
    subset: str | None = None
    check_files: bool = False
    seed: int = 0
    csv_name: str = "reports.csv"


class Recipe:
    """Base class: subclasses set ``name``, ``description`` and implement :meth:`rows`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, root: Path, out_dir: Path, options: PrepareOptions) -> None:
        self.root = Path(root)
        self.out_dir = Path(out_dir)
        self.options = options
        if not self.root.is_dir():
            raise DatasetRecipeError("corpus root is not a directory", path=self.root)

    def expect(self, rel: str, what: str) -> Path:
        """Return ``root/rel``, raising a clear error that this root is not the corpus."""
        p = self.root / rel
        if not p.exists():
            raise DatasetRecipeError(
                f"not a {self.name} root: {rel} is missing", path=self.root, field=rel, expected=what,
            )
        return p

    def image_ref(self, path: Path) -> str:
        if self.options.check_files and not path.exists():
            raise DatasetRecipeError("image referenced by the corpus tables is missing", path=path)
        return relpath(path, self.out_dir)

    def rows(self) -> Iterator[ManifestRow]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def meta(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

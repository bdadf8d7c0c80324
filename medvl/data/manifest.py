"""The manifest: one JSON object per line, one line per study.

A manifest row is the unit of data in medvl. Recipes (``datasets/``) and the
synthetic generator write manifests; datasets, evaluation and the index read them.

Row fields (``ManifestRow``):

=================  ==========================================================
``study_id``       unique id of the study (str)
``patient_id``     pseudonymous patient id (str); splits are by patient
``split``          ``train`` | ``val`` | ``test``
``modality``       DICOM modality code: ``CR``, ``DX``, ``CT``, ``MR``, ...
``dims``           2 for a radiograph, 3 for a volume
``image``          path of the image: a DICOM file, a NIfTI file, a PNG/JPEG,
                   or a directory holding one DICOM series. Relative paths are
                   relative to the manifest's directory.
``report``         mapping of section name to text; ``findings`` and
                   ``impression`` are the standard keys
``labels``         mapping finding -> 1 (present) / 0 (absent) / -1 (uncertain);
                   a finding that is not mentioned is left out
``annotations``    list of ``{"finding", "mask"?, "box"?, "laterality"?, "zone"?}``;
                   ``mask`` is a path (NIfTI or PNG, same grid as the image),
                   ``box`` is ``[x0, y0, x1, y1]`` in pixel (column, row)
                   coordinates for 2D or ``[x0, y0, z0, x1, y1, z1]`` in voxel
                   coordinates of the RAS array for 3D
``view``           view position for radiographs (``PA``, ``AP``, ``LL``...) or null
``meta``           free mapping for recipe-specific, non-identifying extras
=================  ==========================================================
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medvl.errors import ManifestError

SPLITS = ("train", "val", "test")
REQUIRED = ("study_id", "patient_id", "split", "modality", "dims", "image", "report")


@dataclass
class ManifestRow:
    """One study. See the module docstring for field meanings."""

    study_id: str
    patient_id: str
    split: str
    modality: str
    dims: int
    image: str
    report: dict[str, str]
    labels: dict[str, int] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    view: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def report_text(self) -> str:
        """FINDINGS and IMPRESSION (or whatever sections exist) joined as one text."""
        order = ["findings", "impression"]
        keys = [k for k in order if self.report.get(k)] + [
            k for k in self.report if k not in order and self.report.get(k)
        ]
        return "\n".join(
            f"{k.upper()}: {self.report[k].strip()}" for k in keys
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_row(obj: Any, where: str) -> ManifestRow:
    """Validate one parsed JSON object as a row; ``where`` (``file:line``) goes into errors."""
    if not isinstance(obj, dict):
        raise ManifestError("row is not a JSON object", path=where)
    for key in REQUIRED:
        if key not in obj:
            raise ManifestError("required field is missing", path=where, field=key)
    if obj["split"] not in SPLITS:
        raise ManifestError(
            f"unknown split {obj['split']!r}", path=where, field="split", expected=" | ".join(SPLITS)
        )
    if obj["dims"] not in (2, 3):
        raise ManifestError(f"dims is {obj['dims']!r}", path=where, field="dims", expected="2 or 3")
    if not isinstance(obj["report"], dict):
        raise ManifestError("report is not a mapping of sections", path=where, field="report")
    for key in ("study_id", "patient_id", "image", "modality"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise ManifestError(f"{key} is empty or not a string", path=where, field=key)
    labels = obj.get("labels") or {}
    for k, v in labels.items():
        if v not in (-1, 0, 1):
            raise ManifestError(
                f"label value {v!r}", path=where, field=f"labels.{k}", expected="1, 0 or -1"
            )
    known = set(ManifestRow.__dataclass_fields__)
    extra = set(obj) - known
    if extra:
        raise ManifestError(
            "unknown field(s) " + ", ".join(sorted(extra)), path=where, field=sorted(extra)[0],
            expected="only " + ", ".join(sorted(known)),
        )
    return ManifestRow(**obj)


def iter_manifest(path: str | os.PathLike[str]) -> Iterator[ManifestRow]:
    """Yield validated rows; a malformed line raises :class:`ManifestError` naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError("manifest file not found", path=p)
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"invalid JSON ({exc.msg})", path=where) from None
            yield check_row(obj, where)


def read_manifest(path: str | os.PathLike[str], split: str | None = None) -> list[ManifestRow]:
    """Read all rows (optionally one split); study ids must be unique."""
    rows = list(iter_manifest(path))
    seen: set[str] = set()
    for r in rows:
        if r.study_id in seen:
            raise ManifestError(f"duplicate study_id {r.study_id!r}", path=path, field="study_id")
        seen.add(r.study_id)
    if split is not None:
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}", field="split", expected=" | ".join(SPLITS))
        rows = [r for r in rows if r.split == split]
    return rows


def resolve_path(manifest_path: str | Path, rel: str) -> Path:
    """Resolve a row's relative image/mask path against the manifest's directory."""
    p = Path(rel)
    return p if p.is_absolute() else Path(manifest_path).resolve().parent / p


def write_manifest(path: str | Path, rows: Iterable[ManifestRow | dict[str, Any]]) -> int:
    """Write rows atomically (temp file + rename). Returns the row count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                obj = r.to_json() if isinstance(r, ManifestRow) else r
                fh.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def check_patient_splits(rows: Iterable[ManifestRow]) -> dict[str, set[str]]:
    """Return ``{patient_id: {splits}}`` for every patient found in more than one split."""
    where: dict[str, set[str]] = {}
    for r in rows:
        where.setdefault(r.patient_id, set()).add(r.split)
    return {p: s for p, s in where.items() if len(s) > 1}

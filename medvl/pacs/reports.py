"""Report text for studies fetched from a PACS: from a text SR in the study, or from a CSV.

A radiology department keeps the report either in the PACS as a DICOM Structured Report
(Basic Text SR or Enhanced/Comprehensive SR with TEXT items) or in the RIS, exported as
a table. :func:`report_from_sr` reads the first; :class:`ReportTable` joins the second on
StudyInstanceUID or AccessionNumber. Both return the report as sections
(``findings``, ``impression``) with the study's own identifiers scrubbed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.errors import DatasetRecipeError
from medvl.pacs.identity import scrub_text

# Concept names of SR TEXT items, lower-cased -> report section.
SECTION_NAMES = {
    "findings": "findings", "finding": "findings", "impression": "impression", "impressions": "impression",
    "conclusion": "impression", "conclusions": "impression", "summary": "impression",
}
TEXT_SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
KEY_COLUMNS = ("StudyInstanceUID", "AccessionNumber")
TEXT_COLUMNS = ("report", "findings", "impression")


def _text_items(items: Iterable[Any], heading: str, out: list[tuple[str, str]]) -> None:
    for item in items:
        name = ""
        if "ConceptNameCodeSequence" in item and len(item.ConceptNameCodeSequence):
            name = str(item.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
        if str(item.get("ValueType", "")) == "TEXT" and str(item.get("TextValue", "")).strip():
            out.append((name or heading, str(item.TextValue)))
        if "ContentSequence" in item:
            _text_items(item.ContentSequence, name or heading, out)


def report_from_sr(datasets: Sequence[Any], needles: Iterable[str] = ()) -> dict[str, str]:
    """The report sections held by the TEXT items of the SR documents among ``datasets``.

    Items are assigned to ``findings`` or ``impression`` by their concept name (or the
    enclosing container's): "Findings", "Impression", "Conclusion"...; text under any
    other heading joins ``findings``. Identifiers in ``needles`` are replaced by ``___``.

    Returns:
        ``{}`` when no dataset is a text-bearing SR.
    """
    needles = list(needles)
    for ds in datasets:
        if str(ds.get("SOPClassUID", "")) not in TEXT_SR_CLASSES or "ContentSequence" not in ds:
            continue
        items: list[tuple[str, str]] = []
        _text_items(ds.ContentSequence, "", items)
        sections: dict[str, list[str]] = {}
        for name, text in items:
            key = SECTION_NAMES.get(name.strip().lower(), "findings")
            sections.setdefault(key, []).append(" ".join(text.split()))
        report = {k: scrub_text(" ".join(v), needles) for k, v in sections.items() if v}
        if report:
            return report
    return {}


@dataclass
class ReportTable:
    """Reports from a CSV keyed by ``StudyInstanceUID`` or ``AccessionNumber``.

    Columns: one key column (or both), then ``report`` (free text, sections found by
    heading) or ``findings``/``impression``; any other column is a label (1, 0, -1 or
    blank) as in the ``folder`` recipe. The key columns are only matched, never copied.
    """

    by_uid: dict[str, tuple[dict[str, str], dict[str, int]]] = field(default_factory=dict)
    by_accession: dict[str, tuple[dict[str, str], dict[str, int]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ReportTable:
        """Read and check the CSV.

        Raises:
            DatasetRecipeError: missing file, no key column, no text column, a bad label
                cell or an empty report; names the line and the column.
        """
        from medvl.data.reports import extract_sections
        from medvl.recipes.base import map_label_name, read_table

        path = Path(path)
        table = cls()
        rows = read_table(path, [])
        for lineno, r in enumerate(rows, 2):
            where = f"{path}:{lineno}"
            if lineno == 2:
                header = set(r)
                if not header & set(KEY_COLUMNS):
                    raise DatasetRecipeError("no key column", path=path, field="header",
                                             expected=" or ".join(KEY_COLUMNS))
                if not header & set(TEXT_COLUMNS):
                    raise DatasetRecipeError("no report column", path=path, field="header",
                                             expected="report, or findings/impression")
            if (r.get("findings") or "").strip() or (r.get("impression") or "").strip():
                report = {k: r[k].strip() for k in ("findings", "impression") if (r.get(k) or "").strip()}
            else:
                text = (r.get("report") or "").strip()
                report = extract_sections(text) or ({"findings": " ".join(text.split())} if text else {})
            if not report:
                raise DatasetRecipeError("empty report", path=where, field="report")
            labels: dict[str, int] = {}
            for k, v in r.items():
                if k is None or k in KEY_COLUMNS or k in TEXT_COLUMNS or not (v or "").strip():
                    continue
                try:
                    val = int(float(v))
                except ValueError:
                    val = 2
                if val not in (-1, 0, 1):
                    raise DatasetRecipeError(f"label value {v!r}", path=where, field=k, expected="1, 0, -1 or blank")
                labels[map_label_name(k)] = val
            uid, acc = (r.get("StudyInstanceUID") or "").strip(), (r.get("AccessionNumber") or "").strip()
            if not uid and not acc:
                raise DatasetRecipeError("no StudyInstanceUID or AccessionNumber", path=where, field="key")
            if uid:
                table.by_uid[uid] = (report, labels)
            if acc:
                table.by_accession[acc] = (report, labels)
        return table

    def lookup(self, study_uid: str, accession: str, needles: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, int]] | None:
        """The study's report (identifiers scrubbed) and labels, or ``None``."""
        hit = self.by_uid.get(study_uid) or (self.by_accession.get(accession) if accession else None)
        if hit is None:
            return None
        needles = list(needles)
        return {k: scrub_text(v, needles) for k, v in hit[0].items()}, dict(hit[1])

"""A DICOMweb server (a hospital PACS, Orthanc, dcm4chee, a cloud DICOM store) as a corpus.

``medvl prepare dicomweb --url URL --out DIR [--modality CR,DX] [--since DATE]
[--until DATE] [--reports CSV]`` lists the studies (QIDO-RS), fetches the one image
series each needs (WADO-RS, concurrently), de-identifies every instance on the way in
(PS3.15 basic profile, as ``medvl deid``) and writes::

    DIR/manifest.jsonl          one row per complete study (de-identified ids only)
    DIR/images/...              de-identified DICOM, named by the new UIDs
    DIR/ingest_report.json      counts, and skipped studies by keyed reference + reason
    DIR/.medvl-pacs/            the cache and the secret: keep it to resume, never share it

A rerun fetches nothing twice (instances are cached by a keyed hash of their SOP
Instance UID). Reports come from a text SR in the study or from ``--reports CSV``
joined on StudyInstanceUID or AccessionNumber. See ``docs/pacs.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.pacs.config import PacsConfig

STATE_DIR = ".medvl-pacs"


@dataclass
class DicomWebPrepare:
    """One ``prepare dicomweb`` run.

    Attributes:
        config: the server (URL, credentials, limits, workers).
        out_dir: output folder.
        modalities: studies holding any of these; also the image series taken.
        since, until: StudyDate range (``YYYY-MM-DD``), inclusive.
        reports_csv: reports table; ``None`` reads text SRs from the studies.
        description: part of the study description to match.
        limit: at most this many studies.
        dates: ``remove`` or ``shift`` (de-identification of dates).
        allow_burned_in: accept instances flagged BurnedInAnnotation YES.
        require_report: skip studies without a report.
    """

    config: PacsConfig
    out_dir: Path
    modalities: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    reports_csv: Path | None = None
    description: str | None = None
    limit: int | None = None
    dates: str = "remove"
    allow_burned_in: bool = False
    require_report: bool = True
    progress: bool = True
    result: Any = field(default=None, init=False)

    def run(self, on_study: Any = None) -> Any:
        """Search, ingest, write the manifest and the report; returns the ``IngestResult``.

        The manifest is written (atomically) even when the run is interrupted, holding
        every study completed so far; studies not yet complete are simply absent.

        Raises:
            PacsError: the search itself fails (server down, 401, TLS).
            DatasetRecipeError: a malformed reports CSV.
        """
        from medvl.atomic import write_text_atomic
        from medvl.data.manifest import write_manifest
        from medvl.pacs.cache import IngestCache
        from medvl.pacs.client import DicomWebSource
        from medvl.pacs.identity import keyed, load_secret
        from medvl.pacs.ingest import Ingester, IngestOptions
        from medvl.pacs.reports import ReportTable

        out = Path(self.out_dir)
        state = out / STATE_DIR
        table = ReportTable.read(self.reports_csv) if self.reports_csv else None
        source = DicomWebSource(self.config, load_secret(state))
        studies = source.search_studies(modalities=self.modalities, since=self.since, until=self.until,
                                        description=self.description, limit=self.limit)
        cache = IngestCache(out, state)
        options = IngestOptions(modalities=tuple(m.upper() for m in self.modalities), dates=self.dates,  # type: ignore[arg-type]
                                allow_burned_in=self.allow_burned_in, require_report=self.require_report)
        ingester = Ingester(source, out, cache, options, table, on_study=on_study)
        try:
            self.result = ingester.run(studies, progress=self.progress)
        finally:
            # Complete studies only, in search order: whatever happened, the manifest
            # never names a study whose files are not all on disk.
            rows = []
            for s in studies:
                row = cache.study(keyed(source.secret, "study:" + s.uid))
                if row is not None and (out / row["image"]).exists():
                    rows.append(row)
            write_manifest(out / "manifest.jsonl", rows)
            summary = self.result.summary() if self.result is not None else {"stopped": "interrupted"}
            summary.update({"manifest_rows": len(rows), "server_requests": source.requests,
                            "profile": "DICOM PS3.15 Basic Application Level Confidentiality Profile "
                                       "(dicognito + medvl), on ingest"})
            write_text_atomic(out / "ingest_report.json", json.dumps(summary, indent=2) + "\n")
            cache.close()
        return self.result

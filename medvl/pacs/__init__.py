"""medvl.pacs: a PACS over DICOMweb as a source of studies and a sink of results.

Public API (imported lazily so ``import medvl.pacs`` stays cheap):

* :class:`DicomWebSource` (``medvl.pacs.client``): QIDO-RS search without patient
  names or ids, WADO-RS fetch, STOW-RS store; credentials never printed.
* :class:`PacsConfig`, :func:`load_pacs_config` (``medvl.pacs.config``): URL,
  credentials from the environment or a config file, TLS, timeouts, limits.
* :class:`Ingester` (``medvl.pacs.ingest``): fetch, de-identify (``medvl.io.deid``) and
  cache studies; used by ``medvl prepare dicomweb``.
* :func:`findings_sr` (``medvl.pacs.sr``): zero-shot findings and similar cases as a
  Comprehensive SR (TID 1500), research use only.

See ``docs/pacs.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.lazy import lazy_exports

_EXPORTS = {
    "DicomWebSource": "medvl.pacs.client",
    "StudyInfo": "medvl.pacs.client",
    "PacsConfig": "medvl.pacs.config",
    "load_pacs_config": "medvl.pacs.config",
    "Ingester": "medvl.pacs.ingest",
    "IngestOptions": "medvl.pacs.ingest",
    "IngestCache": "medvl.pacs.cache",
    "ReportTable": "medvl.pacs.reports",
    "report_from_sr": "medvl.pacs.reports",
    "findings_sr": "medvl.pacs.sr",
    "SimilarCase": "medvl.pacs.sr",
}

if TYPE_CHECKING:
    from medvl.pacs.cache import IngestCache
    from medvl.pacs.client import DicomWebSource, StudyInfo
    from medvl.pacs.config import PacsConfig, load_pacs_config
    from medvl.pacs.ingest import Ingester, IngestOptions
    from medvl.pacs.reports import ReportTable, report_from_sr
    from medvl.pacs.sr import SimilarCase, findings_sr

__all__ = [
    "DicomWebSource", "IngestCache", "IngestOptions", "Ingester", "PacsConfig", "ReportTable", "SimilarCase",
    "StudyInfo", "findings_sr", "load_pacs_config", "report_from_sr",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)

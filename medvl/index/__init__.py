"""medvl.index: a searchable on-disk index of cases (images + reports).

Public API (imported lazily so ``import medvl.index`` stays cheap):

* :func:`build_index` (``medvl.index.build``): embed a manifest's studies, incrementally
  and atomically.
* :class:`CaseIndex` (``medvl.index.case_index``): ``open(dir)``, ``search`` (with the
  out-of-distribution flag of the query), ``search_text``, ``search_image``,
  ``search_vector``, ``get``, ``study_ids``.
* :class:`Hit`: one ranked case; :class:`SearchResult`: hits plus ``ood``/``ood_reason``.
* :class:`IndexConfig` (``medvl.index.config``): the ``index`` config section.

Vectors are unit-norm float32 ``.npy`` files searched exactly with numpy by default
(FAISS IVF/HNSW when installed and the corpus is large); case metadata and report text
live in SQLite. No patient identifier is stored.
"""

from __future__ import annotations

from medvl.lazy import lazy_exports

_EXPORTS = {
    "build_index": "medvl.index.build",
    "CaseIndex": "medvl.index.case_index",
    "Hit": "medvl.index.case_index",
    "SearchResult": "medvl.index.case_index",
    "model_fingerprint": "medvl.index.case_index",
    "IndexConfig": "medvl.index.config",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)

"""The viewer's PACS mode: browse a DICOMweb server's studies, open one, find similar cases.

The server comes from the environment or a config file (``MEDVL_PACS_URL`` /
``MEDVL_PACS_CONFIG``, see ``docs/pacs.md``); credentials never reach the page. The study
list shows date, modalities, description (the study's own identifiers scrubbed) and
counts, and names each study by its keyed reference: no patient name, id, accession
number or UID is shown or sent to the browser. Opening a study fetches its image series
through :class:`medvl.pacs.ingest.Ingester`, so the page only ever holds the
*de-identified* copy (in a private temporary folder of the session), then shows it with
the app's own image, zero-shot and results panels.

The app hooks this in as one more query mode (:data:`MODE`, :func:`query_by_pacs`).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import streamlit as st

from medvl_viewer import panels

MODE = "PACS study"
MODALITIES = ("CR", "DX", "CT", "MR", "MG", "US")
MAX_LISTED = 200


@st.cache_resource(show_spinner=False)
def _source() -> Any:
    """The configured server, one per viewer process (a fresh keyed-hash secret per process)."""
    from medvl.pacs.client import DicomWebSource
    from medvl.pacs.config import load_pacs_config

    return DicomWebSource(load_pacs_config())


def _session_dir() -> Path:
    state = st.session_state
    if "pacs_tmp" not in state:
        state["pacs_tmp"] = tempfile.TemporaryDirectory(prefix="medvl-pacs-")
    return Path(state["pacs_tmp"].name)


def _open(source: Any, study: Any) -> Any:
    """Fetch and de-identify the study's image series into the session folder (cached there)."""
    from medvl.pacs.cache import IngestCache
    from medvl.pacs.ingest import Ingester, IngestOptions

    root = _session_dir()
    cache = IngestCache(root, root / ".state")
    try:
        ingester = Ingester(source, root, cache, IngestOptions(require_report=False))
        with ThreadPoolExecutor(source.config.workers) as pool:
            return ingester.ingest(study, pool)
    finally:
        cache.close()


def query_by_pacs(page: Any) -> None:
    """Draw the PACS mode.

    Args:
        page: the app's :class:`medvl_viewer.modes.Page` (catalogue, model handle, k,
            the warnings box above the results).
    """
    from medvl.errors import MedvlError
    from medvl_viewer import modes
    from medvl_viewer.backend import Case, Query, effective_modality

    try:
        source = _source()
    except MedvlError as exc:
        st.info("No PACS is configured. Set MEDVL_PACS_URL (and MEDVL_PACS_USERNAME/PASSWORD or "
                f"MEDVL_PACS_TOKEN) or MEDVL_PACS_CONFIG before starting the viewer ({exc.message}).")
        return
    side = st.sidebar
    modalities = side.multiselect("Modality", MODALITIES, key="pacs_modality")
    today = dt.date.today()
    dates = side.date_input("Study date", value=(), max_value=today, key="pacs_dates")
    description = side.text_input("Description contains", key="pacs_description").strip()
    since = until = None
    if isinstance(dates, (tuple, list)) and dates:
        since = dates[0].isoformat()
        until = dates[-1].isoformat()
    try:
        studies = source.search_studies(modalities=modalities, since=since, until=until,
                                        description=description or None, limit=MAX_LISTED)
    except MedvlError as exc:
        # the message names the server and what failed; never credentials
        st.error(f"PACS search failed: {exc.message}")
        return
    if not studies:
        st.info("No study on the server matches these filters.")
        return
    st.caption(f"{len(studies)} studies (at most {MAX_LISTED} listed); studies are named by a "
               "keyed reference, never by patient name, id or UID. Research use only.")
    st.dataframe([s.display() for s in studies], hide_index=True, key="pacs_table")
    by_ref = {s.ref: s for s in studies}
    ref = side.selectbox("Open study", list(by_ref), key="pacs_ref")
    study = by_ref[ref]
    with st.spinner("Fetching and de-identifying the study ..."):
        outcome = _open(source, study)
    if outcome.row is None:
        st.error(f"Cannot open study {ref}: {outcome.reason}")
        return
    path = _session_dir() / outcome.row["image"]
    report = outcome.row.get("report") or {}
    case = Case(study_id=ref, report="\n".join(f"{k.upper()}: {v}" for k, v in report.items() if v),
                modality=outcome.row.get("modality"))
    left, right = st.columns([2, 3])
    with left:
        st.subheader(f"Study {ref} ({outcome.row['modality']}, de-identified copy)")
        image = modes.read_for_display(page, path, "The study's image")
        modality = effective_modality(image, outcome.row["modality"]) if image is not None else None
        if image is not None:
            panels.image_panel(page.catalogue, page.handle.get, image, key=f"pacs-{ref}", image_path=path,
                               modality=modality, what=f"image of study {ref}")
        if case.report:
            st.caption("Report of this study (identifiers scrubbed)")
            panels.case_report(case)
        else:
            st.caption("(no text SR in the study)")
    if image is None:
        return
    modes.search_and_show(page, left, right, path, modality, query=Query(image_path=path),
                          query_assertions=modes.query_statements(case))
    with left:
        export_section(page, source, study, path)


# -- results back as DICOM, only when asked ----------------------------------------------

def _export(backend: Any, path: Path, out: Path | None, k: int, allow_ood: bool, *, evidence: Any = None,
            store_to: Any = None) -> None:
    """``medvl.pacs.export.export_findings_sr`` with the viewer's loaded model and index."""
    import contextlib

    from medvl.pacs.export import export_findings_sr

    lock = getattr(backend, "_index_lock", None) or contextlib.nullcontext()
    with lock:
        export_findings_sr(backend.pipe, path, out, index=backend.index, k=k, allow_ood=allow_ood,
                           evidence=evidence, store_to=store_to)


def export_section(page: Any, source: Any, study: Any, path: Path) -> None:
    """"Export findings as DICOM SR": the SR is built only when the button is pressed.

    The file offered for download is built from the session's de-identified copy (its
    patient module is the pseudonymous one; similar cases are referenced by the index's
    de-identified UIDs). Storing on the server (STOW-RS) is offered only when the
    configuration allows it (``store: true`` / ``MEDVL_PACS_STORE=1``) and happens only on
    its own button: that SR is attached to the source study's headers (WADO-RS metadata,
    which never reach the page) so the PACS files it with the patient, and goes to no file.
    An image the model flags as out of distribution is refused unless the box is ticked.
    """
    from medvl.errors import MedvlError

    st.markdown("---")
    backend = page.backend()
    if getattr(backend, "pipe", None) is None or getattr(backend, "index", None) is None:
        st.caption("Export findings as DICOM SR: available once the model has loaded.")
        return
    allow_ood = st.checkbox("Export even if the model flags this image as out of distribution (the SR says so)",
                            key="pacs_allow_ood")
    held = st.session_state.get("pacs_sr")
    if held is not None and held[0] != study.ref:
        held = st.session_state["pacs_sr"] = None
    if st.button("Export findings as DICOM SR", key="pacs_export"):
        out = _session_dir() / "export" / f"{study.ref}-findings.sr.dcm"
        try:
            with st.spinner("Scoring the image and building the SR ..."):
                _export(backend, path, out, page.k, allow_ood)
            held = st.session_state["pacs_sr"] = (study.ref, out.read_bytes())
        except MedvlError as exc:
            held = st.session_state["pacs_sr"] = None
            st.error(f"No SR exported: {exc.message}")
        finally:
            out.unlink(missing_ok=True)
    if held is None:
        st.caption("Zero-shot findings and similar cases as a DICOM Comprehensive SR (TID 1500), "
                   "research use only; built and sent only when you ask.")
        return
    st.download_button("Download the SR (DICOM file)", data=held[1], file_name=f"{study.ref}-findings.sr.dcm",
                       mime="application/dicom", key="pacs_download")
    st.caption(f"SR of study {study.ref} ready ({len(held[1]):,} bytes, de-identified; research use only).")
    if not source.config.store:
        st.caption("Storing results on the PACS is off (store: true in the PACS config or MEDVL_PACS_STORE=1).")
        return
    if st.button("Store the SR on the PACS (STOW-RS)", key="pacs_store"):
        try:
            from medvl.pacs.export import source_evidence

            with st.spinner("Storing the SR on the PACS ..."):  # no file: this SR carries the patient's identifiers
                _export(backend, path, None, page.k, allow_ood, evidence=source_evidence(source, study),
                        store_to=source)
            st.success(f"SR stored on the PACS with study {study.ref}.")
        except MedvlError as exc:
            st.error(f"SR not stored: {exc.message}")

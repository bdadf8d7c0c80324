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

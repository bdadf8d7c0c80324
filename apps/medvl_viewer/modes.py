"""The three ways to query: a case from the index, an uploaded image, free text.

Each mode draws the query on the left (image, finding scores, the case's report) and
the results on the right, and puts what makes the results doubtful (an input unlike
the index) in one warning above them. A query the index cannot take (a volume for an
index of radiographs) gets one message saying so, and no scores or results that would
contradict it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from medvl_viewer import panels, render, uploads
from medvl_viewer.backend import (
    UNKNOWN_MODALITIES,
    Case,
    Catalogue,
    Query,
    SearchResult,
    ViewerBackend,
    effective_modality,
)
from medvl_viewer.messages import read_message, upload_message
from medvl_viewer.upload_guard import upload_guard

MODES = ("Case from index", "Uploaded image", "Free text")
#: Choices for an upload whose file records no modality (NIfTI).
UPLOAD_MODALITIES = ("unknown", "CT", "CR", "DX", "MR")
#: How messages name an upload: exported file names often carry the patient's name.
UPLOAD_LABEL = "the uploaded file"
#: What a text query is compared with: the cases' image or report embeddings.
TEXT_TARGETS = {"images": "image", "reports": "report"}
#: Cases per page of the case list.
PER_PAGE = 50
#: The most results the page shows (the sidebar slider's end): fetched at once, their
#: thumbnails made in the background, so asking for more results costs no new search.
MAX_RESULTS = 20


@dataclass
class Page:
    """What every query mode draws with."""

    catalogue: Catalogue
    handle: Any  # app.BackendHandle: .get() -> ViewerBackend | None, .ready()
    k: int
    warnings: Any  # the container above the results
    max_upload_mb: float

    def backend(self) -> ViewerBackend | None:
        return self.handle.get()  # type: ignore[no-any-return]


def show_warnings(page: Page, warnings: list[str]) -> None:
    """One warning above the results listing every reason they may not mean much."""
    if warnings:
        page.warnings.warning(
            "**This query is unlike the cases in the index.** " + " ".join(warnings)
            + " Similar cases and scores below are unlikely to be meaningful.", icon="⚠️")


def read_for_display(page: Page, path: Path, what: str, frame: int | None = None) -> Any:
    """Read an image for display, or show one plain message (no path, no tag numbers)."""
    try:
        return page.catalogue.read_image(path, frame)
    except Exception as exc:  # noqa: BLE001 - an untrusted file must never crash the page
        panels.log.info("image not readable: %s", type(exc).__name__)
        st.error(read_message(exc, what))
    return None


def _scores_and_warnings(page: Page, backend: ViewerBackend, result: SearchResult, path: Path,
                         modality: str | None, frame: int | None) -> None:
    """Finding scores of a query image (withheld when the image is unlike the index)."""
    if result.warnings:
        panels.scores_panel(None, backend.model_info(), withheld="the image is unlike those in the index.")
        return
    try:
        scores = backend.finding_scores(path, modality, frame)
    except Exception as exc:  # noqa: BLE001 - see panels.show_failure
        panels.show_failure("Finding scores are not available", exc)
        return
    panels.scores_panel(scores, backend.model_info())


def query_statements(case: Case) -> list[Any]:
    """What a query case's report states as present (FINDINGS / IMPRESSION): what to highlight in hits."""
    from medvl.data.assertions import report_statements

    return [a for s in report_statements(case.report) if s.main for a in s.assertions if a.status == "present"]


# -- case from the index -------------------------------------------------------------
def _case_label(rows: dict[str, Any]) -> Any:
    def label(study_id: str) -> str:
        r = rows.get(study_id)
        if r is None:
            return study_id
        bits = [b for b in (r.modality, r.view) if b]
        found = ", ".join(panels.finding_display(f) for f in r.positives if f != "no_finding")
        return " · ".join([study_id, " ".join(bits)] + ([found] if found else []))

    return label


def pick_case(page: Page) -> str | None:
    """The case picker: find by study id or finding, page through the whole index."""
    sb = st.sidebar
    text = sb.text_input("Find a case", key="case_filter", placeholder="study id or finding, e.g. left effusion",
                         on_change=lambda: st.session_state.update(case_page=1))
    rows, total = page.catalogue.find(text, 0, 1)
    if total == 0:
        sb.info("No case matches; clear the box to list them all.")
        return None
    n_pages = max(1, math.ceil(total / PER_PAGE))
    state = st.session_state
    if int(state.get("case_page", 1)) > n_pages:
        state["case_page"] = n_pages
    number = int(sb.number_input(f"Page (of {n_pages:,})", min_value=1, max_value=n_pages, step=1,
                                 key="case_page"))
    rows, total = page.catalogue.find(text, number - 1, PER_PAGE)
    first = (number - 1) * PER_PAGE
    sb.caption(f"Cases {first + 1:,}-{first + len(rows):,} of {total:,}")
    options = [r.study_id for r in rows]
    return sb.selectbox("Case", options, key="case_id", format_func=_case_label({r.study_id: r for r in rows}))


def query_by_case(page: Page) -> None:
    study_id = pick_case(page)
    if study_id is None:
        return
    case = page.catalogue.case(study_id)
    left, right = st.columns([2, 3])
    with left:
        st.subheader(f"Case {render.markdown_escape(case.study_id)}")
        panels.case_facts(case)
        image = None
        if case.image_path is None:
            st.info("This case has no image on disk.")
        else:
            image = read_for_display(page, case.image_path, "The image of this case")
        modality = effective_modality(image, case.modality) if image is not None else case.modality
        if image is not None:
            panels.image_panel(page.catalogue, page.handle.get, image, key=f"case-{case.study_id}",
                               image_path=case.image_path, modality=modality, what=f"image of case {case.study_id}")
        panels.case_report(case)
    if image is None or case.image_path is None:
        return
    search_and_show(page, left, right, case.image_path, modality, query=Query(image_path=case.image_path,
                    study_id=case.study_id), query_assertions=query_statements(case), exclude=case.study_id)


def search_and_show(page: Page, left: Any, right: Any, path: Path, modality: str | None, *, query: Query,
                    query_assertions: list[Any], exclude: str | None = None, frame: int | None = None) -> None:
    """Search the index with an image; results and their warning on the right, scores on the left."""
    backend = page.backend()
    if backend is None:
        return
    with right:
        try:
            result = backend.search_image(path, max(page.k, MAX_RESULTS), modality=modality, exclude=exclude,
                                          frame=frame)
            shown, more = result.hits[:page.k], result.hits[page.k:]
            result.hits = shown
        except Exception as exc:  # noqa: BLE001 - see panels.show_failure
            panels.show_failure("The search failed", exc)
            return
        show_warnings(page, result.warnings)
        panels.results_panel(page.catalogue, backend, result.hits, query, query_assertions=query_assertions,
                             highlight=not (result.warnings and not query_assertions), reference=result.reference,
                             doubtful=bool(result.warnings))
        panels.prefetch_thumbnails(page.catalogue, more)
    with left:
        _scores_and_warnings(page, backend, result, path, modality, frame)


# -- uploaded image ------------------------------------------------------------------
@dataclass
class HeldUpload:
    """An upload staged in a private temp folder, kept in the session across query modes."""

    tmp: tempfile.TemporaryDirectory[str]
    staged: uploads.StagedUpload
    number: int  # changes with each upload, so its widgets start fresh


def drop_upload() -> None:
    """Delete the staged upload (it may hold a whole DICOM series) and its message."""
    held = st.session_state.pop("upload", None)
    if held is not None:
        held.tmp.cleanup()
    st.session_state.pop("upload_error", None)
    st.session_state.pop("upload_frame", None)


def _refused(generation: int, limits: uploads.UploadLimits) -> None:
    """The browser refused a file (over the server's upload limit): say so, drop the uploader."""
    drop_upload()
    st.session_state["upload_error"] = (
        f"The file is too large for this viewer (at most {limits.max_bytes / uploads.MIB:.0f} MiB). "
        "Upload a smaller file or one series.")
    st.session_state["upload_gen"] = generation + 1


def upload_sidebar(page: Page) -> uploads.StagedUpload | None:
    """The uploader; the staged upload (kept across mode switches), or None.

    A file is staged as soon as it arrives and the uploader is then replaced by a fresh,
    empty one, so the file's name (which may carry a patient's name) leaves the page.
    """
    state = st.session_state
    limits = uploads.UploadLimits(max_bytes=int(page.max_upload_mb * uploads.MIB))
    generation = int(state.setdefault("upload_gen", 0))
    sb = st.sidebar
    uploaded = sb.file_uploader(
        "DICOM file, DICOM series (.zip) or NIfTI (.nii, .nii.gz)", key=f"upload-{generation}",
        label_visibility="visible",
    )
    sb.caption(f"Largest accepted file: {limits.max_bytes / uploads.MIB:.0f} MiB. "
               "The file's name is not kept or shown.")
    with sb:
        upload_guard(key=f"upload-guard-{generation}", on_refused=lambda: _refused(generation, limits))
    if uploaded is not None:
        drop_upload()
        tmp = tempfile.TemporaryDirectory(prefix="medvl-upload-")
        try:
            staged = uploads.stage_upload(uploaded.name, int(uploaded.size), uploaded.getvalue, tmp.name, limits,
                                          label=UPLOAD_LABEL)
            state["upload"] = HeldUpload(tmp, staged, generation)
        except uploads.UploadError as exc:
            tmp.cleanup()
            state["upload_error"] = upload_message(exc)
        state["upload_gen"] = generation + 1
        st.rerun()  # draws a new, empty uploader: the old one showed the file's name
    held: HeldUpload | None = state.get("upload")
    if held is not None:
        sb.caption(f"Current upload: {held.staged.describe()}")
        sb.button("Remove upload", on_click=drop_upload, key="remove_upload")
        return held.staged
    return None


def query_by_upload(page: Page) -> None:
    staged = upload_sidebar(page)
    error = st.session_state.get("upload_error")
    if error:
        st.error(error)
    if staged is None:
        if not error:
            st.info("Upload " + uploads.ACCEPTED + " in the sidebar to search with it.")
        return
    held: HeldUpload = st.session_state["upload"]
    frame = None
    if staged.frames > 1:
        choice = st.sidebar.selectbox(f"Volume of the 4D file (1-{staged.frames})", list(range(1, staged.frames + 1)),
                                      key="upload_frame")
        frame = int(choice) - 1
    image = read_for_display(page, staged.path, "The uploaded file", frame)
    if image is None:
        return
    modality = effective_modality(image)
    if modality is None or modality in UNKNOWN_MODALITIES:
        # NIfTI records no modality; it decides the CT windows and the prompt set.
        chosen = st.sidebar.selectbox("Modality of the upload (not recorded in the file)", UPLOAD_MODALITIES,
                                      key="upload_modality")
        modality = None if chosen == UPLOAD_MODALITIES[0] else chosen
    dims = 3 if getattr(image, "affine", None) is not None else 2
    searchable = dims == page.catalogue.dims()
    left, right = st.columns([2, 3])
    key = f"upload-{held.number}-{frame}-{modality}"
    with left:
        st.subheader("Uploaded image")
        if not searchable:
            one, many = {2: "a 2D image", 3: "a 3D volume"}, {2: "2D images", 3: "3D volumes"}
            st.info(f"This upload is {one[dims]} and the index holds {many[page.catalogue.dims()]}, so it cannot "
                    "be searched or scored here. It is shown for viewing only.")
        panels.image_panel(page.catalogue, page.handle.get, image, key=key, image_path=staged.path, frame=frame,
                           modality=modality, heatmaps=searchable, what="uploaded image")
    if not searchable:
        return
    search_and_show(page, left, right, staged.path, modality, query=Query(image_path=staged.path),
                    query_assertions=[], frame=frame)


# -- free text -----------------------------------------------------------------------
def query_by_text(page: Page) -> None:
    from medvl.data.assertions import find_assertions

    sb = st.sidebar
    text = sb.text_input("Findings to search for", key="query_text", placeholder="e.g. left pleural effusion")
    target = sb.radio("Match the text against", list(TEXT_TARGETS), key="text_target",
                      help="Images: cross-modal search (what the model learnt to align). "
                           "Reports: report-to-report search.")
    use_reports = sb.checkbox("Check side and negation in the reports", value=True, key="use_reports",
                              help="Cases whose report states the finding (same side, not denied) come first; "
                                   "those whose report denies it, hedges it or puts it on the other side, last.")
    text = text.strip()
    if not text:
        st.info("Type a description of findings in the sidebar, e.g. *left pleural effusion*.")
        return
    backend = page.backend()
    if backend is None:
        return
    try:
        result = backend.search_text(text, max(page.k, MAX_RESULTS), TEXT_TARGETS[target], use_reports=use_reports)
        more = result.hits[page.k:]
        result.hits = result.hits[:page.k]
    except Exception as exc:  # noqa: BLE001 - see panels.show_failure
        panels.show_failure("The search failed", exc)
        return
    show_warnings(page, result.warnings)
    query = find_assertions(text)
    left, right = st.columns([2, 3])
    with left:
        top = result.hits[0] if result.hits else None
        if top is not None and top.image_path is not None:
            st.subheader(f"Best match: {render.markdown_escape(top.study_id)}")
            image = read_for_display(page, top.image_path, "The image of the best match")
            if image is not None:
                # No map of a query flagged as unlike the index: it would look like evidence.
                panels.image_panel(page.catalogue, page.handle.get, image, key=f"text-{top.study_id}",
                                   image_path=top.image_path, modality=effective_modality(image, top.modality),
                                   heat_phrase="" if result.warnings else text,
                                   what=f"image of case {top.study_id}")
    with right:
        if result.reranked:
            st.caption("Ordered by the reports' statements of the searched findings (side and negation), "
                       "then by similarity.")
        panels.results_panel(page.catalogue, backend, result.hits, Query(text=text), query_assertions=query,
                             highlight=not result.warnings, reference=result.reference, doubtful=bool(result.warnings))
        panels.prefetch_thumbnails(page.catalogue, more)

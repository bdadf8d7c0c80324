"""medvl clinician viewer (research use only).

Run::

    streamlit run apps/medvl_viewer/app.py -- --index runs/demo/index --model runs/demo/model

or ``medvl viewer --index runs/demo/index``, or ``make viewer``. Without arguments, ``MEDVL_VIEWER_INDEX`` and ``MEDVL_VIEWER_MODEL``
are read from the environment; without a model, the one the index records is used.

Query by a case from the index, an uploaded DICOM file / DICOM series (zip) / NIfTI
volume, or free text; see the most similar cases with their reports, the best matching
sentences highlighted, a phrase heatmap over the image and zero-shot finding scores.
The app holds no model code: everything goes through :mod:`medvl_viewer.backend`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # `streamlit run apps/medvl_viewer/app.py` runs this file as a script with only its own
    # folder on the path; from a checkout without `pip install .[viewer]` the package is
    # then found in its parent, apps/.
    _APPS = str(Path(__file__).resolve().parent.parent)
    if _APPS not in sys.path:
        sys.path.insert(0, _APPS)

import streamlit as st

from medvl_viewer import backend as backend_mod
from medvl_viewer import pacs_mode, panels, render, uploads
from medvl_viewer.backend import (
    UNKNOWN_MODALITIES,
    Case,
    Query,
    ViewerBackend,
    effective_modality,
)
from medvl.errors import ConfigError, MedvlError

MODES = ("Case from index", "Uploaded image", "Free text", pacs_mode.MODE)
#: Choices for an upload whose file records no modality (NIfTI).
UPLOAD_MODALITIES = ("unknown", "CT", "CR", "DX", "MR")
#: How messages name an upload: exported file names often carry the patient's name.
UPLOAD_LABEL = "the uploaded file"
#: Hides the file name Streamlit's uploader shows, for the same reason.
HIDE_UPLOAD_NAME_CSS = "<style>[data-testid='stFileChipName']{visibility:hidden}</style>"
#: What a text query is compared with: the cases' image or report embeddings.
TEXT_TARGETS = {"images": "image", "reports": "report"}
#: Above this many cases the case picker filters by a typed part of the study id.
CASE_PICKER_LIMIT = 500


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Arguments after ``--`` on the ``streamlit run`` line (unknown ones are ignored)."""
    parser = argparse.ArgumentParser(prog="viewer", add_help=False)
    parser.add_argument("--index", default=os.environ.get("MEDVL_VIEWER_INDEX"), help="case index folder")
    parser.add_argument(
        "--model",
        default=os.environ.get("MEDVL_VIEWER_MODEL"),
        help="model folder (default: the one the index records it was built with)",
    )
    parser.add_argument("--k", default="5", help="number of results shown by default")
    parser.add_argument(
        "--max-upload-mb",
        default=os.environ.get("MEDVL_VIEWER_MAX_UPLOAD_MB", "200"),
        help="largest accepted upload",
    )
    args, _ = parser.parse_known_args(list(argv))
    # Checked here rather than by argparse, whose exit would end the server's script run
    # with a traceback instead of a message on the page.
    try:
        args.k = int(args.k)
        args.max_upload_mb = float(args.max_upload_mb)
    except ValueError as exc:
        raise ConfigError(f"invalid viewer argument ({exc})", field="--k / --max-upload-mb",
                          expected="an integer k and a number of MB") from None
    if args.k < 1 or not args.max_upload_mb > 0:
        raise ConfigError("must be positive", field="--k / --max-upload-mb")
    return args


@st.cache_resource(show_spinner="Loading model and index ...")
def load_backend(index_dir: str, model_dir: str) -> ViewerBackend:
    """Model and index, loaded once per server process and shared by every session."""
    return backend_mod.open_backend(index_dir, model_dir or None)


def _drop_staged() -> None:
    """Delete the staged copy of the previous upload (it may hold a whole DICOM series)."""
    state = st.session_state
    old = state.pop("upload_tmp", None)
    if old is not None:
        old.cleanup()
    for key in ("upload_id", "upload_staged", "upload_error"):
        state.pop(key, None)


def _stage(uploaded, limits: uploads.UploadLimits) -> uploads.StagedUpload:
    """Stage an upload once per file into a private temp folder kept in session state."""
    state = st.session_state
    file_id = getattr(uploaded, "file_id", None) or f"{uploaded.name}:{uploaded.size}"
    if state.get("upload_id") != file_id:
        _drop_staged()
        tmp = tempfile.TemporaryDirectory(prefix="medvl-upload-")
        state["upload_tmp"] = tmp
        state["upload_id"] = file_id
        try:
            state["upload_staged"] = uploads.stage_upload(
                uploaded.name, int(uploaded.size), uploaded.getvalue, tmp.name, limits, label=UPLOAD_LABEL
            )
        except uploads.UploadError as exc:
            state["upload_error"] = str(exc)
    if "upload_error" in state:
        raise uploads.UploadError(state["upload_error"])
    return state["upload_staged"]


def _read(backend: ViewerBackend, path: Path, what: str, *, indexed: bool = True):
    """Read an image through medvl.io, showing a clear message instead of a traceback.

    An indexed case's path is redacted from the message (corpus layouts carry patient
    ids); a staged upload's path is a private temp file and stays.
    """
    try:
        return backend.read_image(path)
    except Exception as exc:  # noqa: BLE001 - an untrusted file must never crash the page
        redact = (str(path), str(Path(path).resolve())) if indexed else ()
        panels.show_failure(f"Cannot read {what}", exc, redact)
    return None


def _search(fn, *args, redact: tuple[str, ...] = ()) -> list[Case]:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - see panels.show_failure
        panels.show_failure("Search failed", exc, redact)
        return []


def _image_with_findings(
    backend: ViewerBackend,
    image,
    path: Path,
    *,
    key: str,
    modality: str | None = None,
    heat_phrase: str | None = None,
) -> None:
    """Image panel and zero-shot panel of a query image.

    The heatmap phrase defaults to the finding the model scores highest, so a heatmap is
    shown without typing; the user can type any phrase instead.
    """
    try:
        probs = backend.zero_shot(path, modality)
    except Exception as exc:  # noqa: BLE001 - see panels.show_failure
        panels.show_failure("Zero-shot scoring failed", exc)
        probs = None
    if heat_phrase is None and probs:
        heat_phrase = panels.finding_display(max(probs, key=probs.get))
    panels.image_panel(backend, image, key=key, heat_phrase=heat_phrase, image_path=path, modality=modality)
    panels.zero_shot_panel(probs)


def query_by_case(backend: ViewerBackend, k: int) -> None:
    ids = backend.case_ids()
    if not ids:
        st.info("The index holds no cases.")
        return
    if len(ids) > CASE_PICKER_LIMIT:
        # A select box with 100 000 options is slow to send and to scroll: filter first.
        part = st.sidebar.text_input("Study id contains", key="case_filter").strip().lower()
        matches = [s for s in ids if part in s.lower()] if part else ids
        if not matches:
            st.info(f"No study id contains {part!r}.")
            return
        if len(matches) > CASE_PICKER_LIMIT:
            st.sidebar.caption(f"{len(matches)} cases match; showing the first {CASE_PICKER_LIMIT}.")
        ids = matches[:CASE_PICKER_LIMIT]
    study_id = st.sidebar.selectbox("Case", ids, key="case_id")
    case = backend.case(study_id)
    left, right = st.columns([2, 3])
    with left:
        st.subheader(f"Case {render.markdown_escape(case.study_id)}")
        if case.image_path is None:
            st.info("This case has no image on disk.")
        else:
            image = _read(backend, case.image_path, f"case {case.study_id}")
            if image is not None:
                modality = effective_modality(image, case.modality)
                _image_with_findings(backend, image, case.image_path, key=f"case-{case.study_id}", modality=modality)
        with st.expander("Report of this case", expanded=False):
            st.text(case.report or "(no report)")
    with right:
        hits: list[Case] = []
        if case.image_path is not None:
            # One extra hit so the case itself can be dropped from its own results.
            hidden = (str(case.image_path), str(Path(case.image_path).resolve()))
            hits = _search(backend.search_image, case.image_path, k + 1, redact=hidden)
            hits = [h for h in hits if h.study_id != case.study_id][:k]
        panels.results_panel(backend, hits, Query(image_path=case.image_path))


def query_by_upload(backend: ViewerBackend, k: int, limits: uploads.UploadLimits) -> None:
    st.html(HIDE_UPLOAD_NAME_CSS)
    uploaded = st.sidebar.file_uploader(
        "DICOM file, DICOM series (.zip) or NIfTI (.nii, .nii.gz)",
        key="upload",
        help=f"At most {limits.max_bytes / uploads.MIB:.0f} MiB.",
    )
    if uploaded is None:
        _drop_staged()
        st.info("Upload " + uploads.ACCEPTED + " in the sidebar to search with it.")
        return
    try:
        staged = _stage(uploaded, limits)
    except uploads.UploadError as exc:
        st.error(f"Upload refused: {exc}")
        return
    image = _read(backend, staged.path, "the uploaded file", indexed=False)
    if image is None:
        return
    left, right = st.columns([2, 3])
    with left:
        st.subheader("Uploaded image")
        modality = effective_modality(image)
        if modality is None or modality in UNKNOWN_MODALITIES:
            # NIfTI records no modality; it decides the CT windows and the prompt set.
            chosen = st.sidebar.selectbox(
                "Modality of the upload (not recorded in the file)", UPLOAD_MODALITIES, key="upload_modality"
            )
            modality = None if chosen == UPLOAD_MODALITIES[0] else chosen
        key = f"upload-{st.session_state['upload_id']}-{modality}"
        _image_with_findings(backend, image, staged.path, key=key, modality=modality)
    with right:
        hits = _search(backend.search_image, staged.path, k)
        panels.results_panel(backend, hits, Query(image_path=staged.path))


def query_by_text(backend: ViewerBackend, k: int) -> None:
    text = st.sidebar.text_input("Findings to search for", key="query_text", placeholder="e.g. left pleural effusion")
    target = st.sidebar.radio(
        "Match the text against",
        list(TEXT_TARGETS),
        key="text_target",
        help="Images: cross-modal search (what the model learnt to align). Reports: report-to-report search.",
    )
    if not text.strip():
        st.info("Type a description of findings in the sidebar to search the reports and images.")
        return
    hits = _search(backend.search_text, text.strip(), k, TEXT_TARGETS[target])
    left, right = st.columns([2, 3])
    with left:
        top = hits[0] if hits else None
        if top is not None and top.image_path is not None:
            st.subheader(f"Best match: {render.markdown_escape(top.study_id)}")
            image = _read(backend, top.image_path, f"case {top.study_id}")
            if image is not None:
                panels.image_panel(
                    backend, image, key=f"text-{top.study_id}", heat_phrase=text.strip(), image_path=top.image_path
                )
    with right:
        panels.results_panel(backend, hits, Query(text=text.strip()))


def main(argv: Sequence[str] | None = None) -> None:
    """Draw the page for one Streamlit run."""
    st.set_page_config(page_title="medvl viewer (research use only)", layout="wide")
    st.warning(panels.RESEARCH_BANNER, icon="⚠️")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        st.error(f"Cannot start the viewer: {exc}")
        st.stop()
    if not args.index:
        st.error(
            "No index given. Start the viewer with "
            "`medvl viewer --index IDX [--model DIR]` "
            "(without --model, the model the index was built with is used)."
        )
        st.stop()
    try:
        backend = load_backend(str(args.index), str(args.model or ""))
    except MedvlError as exc:
        st.error(f"Cannot open the index or model: {exc}")
        st.stop()

    st.sidebar.title("medvl viewer")
    mode = st.sidebar.radio("Query by", MODES, key="mode")
    k = st.sidebar.slider("Number of results", 1, 20, min(max(args.k, 1), 20), key="k")
    limits = uploads.UploadLimits(max_bytes=int(args.max_upload_mb * uploads.MIB))
    if mode == MODES[0]:
        query_by_case(backend, k)
    elif mode == MODES[1]:
        query_by_upload(backend, k, limits)
    elif mode == pacs_mode.MODE:
        pacs_mode.query_by_pacs(backend, k, _image_with_findings, _search)
    else:
        query_by_text(backend, k)


if __name__ == "__main__":  # Streamlit runs the page script as __main__
    main()

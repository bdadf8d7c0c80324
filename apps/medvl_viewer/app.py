"""medvl clinician viewer (research use only).

Run::

    medvl viewer --index runs/demo/index

or ``streamlit run apps/medvl_viewer/app.py -- --index runs/demo/index [--model runs/demo/model]``,
or ``make viewer``. Without arguments, ``MEDVL_VIEWER_INDEX`` and ``MEDVL_VIEWER_MODEL``
are read from the environment; without a model, the one the index records is used.

Query by a case from the index, an uploaded DICOM file / DICOM series (zip) / NIfTI
volume, or free text; see the most similar cases with their reports, the sentences that
state the query's findings highlighted, a phrase heatmap over the image and finding
scores. The app holds no model code: everything goes through :mod:`medvl_viewer.backend`.

Start-up order: the index's metadata opens in a fraction of a second and the first
image is drawn with it; only then does the model (torch, MONAI, transformers: most of a
cold start) start loading, in a background thread, so it does not compete with the first
image; the results follow when it is ready.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    # `streamlit run apps/medvl_viewer/app.py` runs this file as a script with only its own
    # folder on the path; from a checkout without `pip install .[viewer]` the package is
    # then found in its parent, apps/.
    _APPS = str(Path(__file__).resolve().parent.parent)
    if _APPS not in sys.path:
        sys.path.insert(0, _APPS)

import streamlit as st

from medvl.errors import ConfigError, MedvlError
from medvl_viewer import backend as backend_mod
from medvl_viewer import modes, pacs_mode, panels
from medvl_viewer.backend import Catalogue, ViewerBackend
from medvl_viewer.messages import scrub

MODES = (*modes.MODES, pacs_mode.MODE)
#: Widget values kept while their widget is not on the page (another query mode is shown).
PERSISTENT_KEYS = ("case_filter", "case_page", "case_id", "query_text", "text_target", "use_reports",
                   "upload_modality", "upload_frame")

#: One thread loads models in the background, so the first image is drawn meanwhile.
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medvl-viewer-load")


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


@st.cache_resource(show_spinner=False)
def load_catalogue(index_dir: str) -> Catalogue:
    """The index's cases, opened once per server process (no model: fast)."""
    return backend_mod.open_catalogue(index_dir)


@st.cache_resource(show_spinner=False)
def backend_future(index_dir: str, model_dir: str) -> Future[ViewerBackend]:
    """The model backend, loading in the background; one per server process, shared by every session."""
    return _LOADER.submit(backend_mod.open_backend, index_dir, model_dir or None)


class BackendHandle:
    """The model backend when a panel needs it: loads in the background, waits once per page run.

    The load starts when a panel first asks for the model, or at the end of the page run
    (:meth:`start`), so it does not compete with drawing the first image. A failed load
    becomes one message on the page; it is not retried on every widget change (a wrong
    model or index stays wrong until the server is restarted).
    """

    def __init__(self, index_dir: str, model_dir: str) -> None:
        self._args = (index_dir, model_dir)
        self._future: Future[ViewerBackend] | None = None
        self._failed = False

    def start(self) -> Future[ViewerBackend]:
        """Start loading the model in the background (once per server process)."""
        if self._future is None:
            self._future = backend_future(*self._args)
        return self._future

    def ready(self) -> bool:
        """Whether the model has loaded (without waiting or starting the load)."""
        f = self._future
        return f is not None and f.done() and f.exception() is None

    def get(self) -> ViewerBackend | None:
        """The backend, waiting for it; ``None`` (and one message) if it cannot be loaded."""
        if self._failed:
            return None
        future = self.start()
        if not future.done():
            with st.spinner("Loading the model (only on the first visit after a start) ..."):
                future.exception()  # waits
        exc = future.exception()
        if exc is None:
            return future.result()
        self._failed = True
        if isinstance(exc, MedvlError):
            st.error(f"Cannot open the model: {_plain(exc)}")
        else:
            panels.log.error("model load failed", exc_info=exc)
            st.error("Cannot open the model (details in the server log).")
        return None


def _plain(exc: MedvlError) -> str:
    """An error's sentence and what was expected, without the server path it names."""
    return scrub(exc.message) + (f" (expected {exc.expected})" if exc.expected else "")


def landing_line(catalogue: Catalogue) -> str:
    """What the tool does and the three ways to query it, in two sentences."""
    mods = catalogue.modalities()
    kinds = ", ".join(f"{n:,} {m}" for m, n in sorted(mods.items(), key=lambda kv: -kv[1]))
    return (
        f"**medvl viewer** finds cases similar to a query among the **{catalogue.size():,} studies** of this "
        f"index ({kinds}) and shows their reports, with the sentences that state the query's findings "
        "highlighted. Query in three ways (sidebar): **a case from the index**, **an uploaded image** "
        "(DICOM file, DICOM series as .zip, or NIfTI) or **free text** such as *left pleural effusion*."
    )


def _keep_widget_values() -> None:
    """Keep inputs of the query modes not shown now (Streamlit drops unrendered widgets' state)."""
    state = st.session_state
    for key in PERSISTENT_KEYS:
        if key in state:
            state[key] = state[key]


def main(argv: Sequence[str] | None = None) -> None:
    """Draw the page for one Streamlit run."""
    started = time.perf_counter()
    try:
        _page(argv)
    finally:
        panels.report_time("page", started)


def _page(argv: Sequence[str] | None) -> None:
    st.set_page_config(page_title="medvl viewer (research use only)", layout="wide")
    st.warning(panels.RESEARCH_BANNER, icon="⚠️")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        st.error(f"Cannot start the viewer: {exc}")
        st.stop()
    if not args.index:
        st.error(
            "No index given. Start the viewer with `medvl viewer --index IDX [--model DIR]` "
            "(without --model, the model the index was built with is used)."
        )
        st.stop()
    try:
        catalogue = load_catalogue(str(args.index))
    except MedvlError as exc:
        st.error(f"Cannot open the index: {_plain(exc)}")
        st.stop()
    handle = BackendHandle(str(args.index), str(args.model or ""))
    _keep_widget_values()

    st.markdown(landing_line(catalogue))
    st.sidebar.title("medvl viewer")
    mode = st.sidebar.radio("Query by", MODES, key="mode")
    k = st.sidebar.slider("Number of results", 1, modes.MAX_RESULTS, min(max(args.k, 1), modes.MAX_RESULTS), key="k")
    model_box = st.sidebar.container()
    warnings = st.container()  # above the results: what makes this query's results doubtful
    page = modes.Page(catalogue=catalogue, handle=handle, k=k, warnings=warnings,
                      max_upload_mb=args.max_upload_mb)
    if mode == MODES[0]:
        modes.query_by_case(page)
    elif mode == MODES[1]:
        modes.query_by_upload(page)
    elif mode == pacs_mode.MODE:
        pacs_mode.query_by_pacs(page)
    else:
        modes.query_by_text(page)
    handle.start()  # a mode that needed no model yet: load it now, after the page is drawn
    if handle.ready():
        model_box.caption(panels.model_caption(handle.get().model_info()))  # type: ignore[union-attr]


if __name__ == "__main__":  # Streamlit runs the page script as __main__
    main()

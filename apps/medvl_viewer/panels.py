"""Streamlit panels of the viewer: the image, the finding scores, the query case, the results.

Each panel takes plain data (a catalogue or backend, an image, cases) and draws; the
display decisions (windows, planes, overlays, highlights) are pure functions in
:mod:`medvl_viewer.render`. The image panel is a Streamlit fragment: changing its
window, slice or heatmap opacity reruns the image alone, not the page.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from medvl_viewer import render
from medvl_viewer.backend import Case, Catalogue, FindingScores, ModelInfo, Query, ViewerBackend
from medvl_viewer.catalogue import LRU
from medvl_viewer.messages import failure_message
from medvl_viewer.safe_meta import display_facts
from medvl_viewer.slice_view import png_data_uri, slice_view

log = logging.getLogger("medvl.viewer")
#: With ``MEDVL_VIEWER_TIMING=1`` the page and the image fragment print their server time
#: to stderr (``benchmarks/viewer/bench_interactions.py`` reads it).
TIMING = os.environ.get("MEDVL_VIEWER_TIMING") == "1"


def report_time(what: str, start: float) -> None:
    """Print ``medvl-viewer-timing WHAT MS`` to stderr when :data:`TIMING` is on."""
    if TIMING:
        print(f"medvl-viewer-timing {what} {1000.0 * (time.perf_counter() - start):.1f}", file=sys.stderr,
              flush=True)

RESEARCH_BANNER = (
    "**Research use only.** This viewer is not a medical device and must not be used "
    "for diagnosis or treatment decisions. Results come from a research model and may be wrong."
)

AUTO = "Auto (0.5-99.5 percentile)"
FILE_LUT = "VOI LUT in file"

#: Display planes (downscaled to the page's size, physical units) by image, frame and slice.
_PLANES = LRU(64)
#: Encoded images (PNG data URIs) by image, slice and window, and heatmap layers by phrase.
_ENCODED = LRU(128)


def show_failure(what: str, exc: BaseException) -> None:
    """One clear message on the page; the traceback of an unexpected error goes to the server log."""
    from medvl.errors import MedvlError

    if not isinstance(exc, MedvlError):
        log.error("%s", what, exc_info=exc)
    st.error(failure_message(what, exc))


def window_choices(image: Any, presets: dict[str, tuple[float, float]],
                   auto: tuple[float, float] | None = None) -> dict[str, tuple[float, float]]:
    """Windows offered for ``image``: those stored in the file, the modality presets, auto.

    ``auto`` is the automatic window when already known (it costs a percentile pass
    over the whole image, so the image panel memoises it).
    """
    choices: dict[str, tuple[float, float]] = {}
    for i, (center, width) in enumerate(getattr(image, "windows", None) or []):
        choices[f"File window {i + 1}"] = (float(center), max(float(width), 1.0))
    choices.update(presets)
    choices[AUTO] = auto if auto is not None else render.auto_window(image.array)
    return choices


def _is_color(image: Any) -> bool:
    return str(getattr(image, "photometric_interpretation", "")).upper() == "RGB"


def n_display_slices(array: np.ndarray, color: bool) -> int:
    """Slices the viewer scrolls through: 1 for a 2D grey or RGB image, ``z`` for a volume."""
    return 1 if color else render.n_slices(array)


def slice_label(image: Any, index: int, n: int) -> str:
    """``Slice 12 of 64 · z = +35.0 mm`` (the slice centre's superior coordinate), or ``""`` for 2D."""
    if n <= 1:
        return ""
    z = render.slice_position_mm(image, index)
    where = "" if z is None else f" · z = {z:+.1f} mm"
    return f"Slice {index + 1} of {n}{where}"


def _plane(image: Any, image_id: tuple[Any, ...], slice_index: int) -> np.ndarray:
    """The shown plane in physical units, downscaled to the page's size (memoised)."""
    return _PLANES.get((*image_id, slice_index), lambda: render.fit_plane(
        render.display_plane(np.asarray(image.array), slice_index), render.DISPLAY_MAX_SIDE))


def _grey_plane(catalogue: Catalogue, image: Any, image_id: tuple[Any, ...], index: int, key: str,
                modality: str | None) -> tuple[str, tuple[int, int]]:
    """Window controls (preset, level, width); the windowed plane as a PNG data URI and its shape.

    The encoded plane is memoised per image, slice and window: a change of the heatmap's
    opacity or phrase re-sends it without windowing or encoding it again.
    """
    plane = _plane(image, image_id, index)
    invert = str(getattr(image, "photometric_interpretation", "")).upper() == "MONOCHROME1"
    auto = _ENCODED.get((*image_id, "auto-window"), lambda: render.auto_window(image.array))
    choices = window_choices(image, catalogue.window_presets(modality), auto)
    names = list(choices)
    luts = getattr(image, "voi_luts", None) or []
    if luts:  # a file's VOI LUT takes precedence over its windows, as in a PACS
        names.insert(0, FILE_LUT)
    c0, c1, c2 = st.columns([2, 1, 1])
    preset = c0.selectbox("Window", names, index=0, key=f"preset-{key}")
    shape = (int(plane.shape[0]), int(plane.shape[1]))
    if preset == FILE_LUT:
        from medvl.io import apply_voi_lut_table, invert_monochrome1

        def by_lut() -> str:
            out = apply_voi_lut_table(plane, luts[0])
            return png_data_uri(render.to_uint8(invert_monochrome1(out) if invert else out))

        return _ENCODED.get((*image_id, index, FILE_LUT), by_lut), shape
    center0, width0 = choices[preset]
    # The preset is part of the key: choosing a preset resets level/width to it.
    center = c1.number_input("Level", value=float(center0), step=10.0, key=f"level-{key}-{preset}")
    width = c2.number_input("Width", value=float(width0), min_value=1.0, step=10.0, key=f"width-{key}-{preset}")
    # The file's VOI function (e.g. SIGMOID) goes with the file's windows only.
    function = getattr(image, "voi_function", "LINEAR") if preset.startswith("File window") else "LINEAR"
    return _ENCODED.get((*image_id, index, float(center), float(width), invert, function), lambda: png_data_uri(
        render.window_to_uint8(plane, center, width, invert=invert, function=function))), shape


def _sync_slice(view_key: str, slice_key: str) -> None:
    """The wheel or arrow keys moved the image: move the slice slider with it."""
    state = st.session_state.get(view_key)
    new = getattr(state, "slice", None) if state is not None else None
    if new is not None:
        st.session_state[slice_key] = int(new) + 1


@st.fragment
def image_panel(
    catalogue: Catalogue,
    get_backend: Callable[[], ViewerBackend | None],
    image: Any,
    *,
    key: str,
    image_path: Path | None,
    frame: int | None = None,
    modality: str | None = None,
    heat_phrase: str = "",
    heatmaps: bool = True,
    what: str = "image",
) -> None:
    """An image with its window, slice (slider, mouse wheel, arrow keys) and phrase heatmap.

    Args:
        catalogue: window presets.
        get_backend: returns the model backend (loading it on first use) for the heatmap.
        image: a ``medvl.io`` image.
        key: unique per image, so widgets reset to the new image's defaults.
        image_path: the image's file, for the heatmap; ``None`` for no heatmap.
        frame: the volume of a 4D file that ``image`` is.
        modality: the modality to use when the file records none (NIfTI).
        heat_phrase: the heatmap phrase to start with: the query's own text, else none.
        heatmaps: offer the heatmap (not for an image the model cannot take).
        what: how the image's text alternative names it ("query image", "best match").
    """
    started = time.perf_counter()
    try:
        _image_panel(catalogue, get_backend, image, key=key, image_path=image_path, frame=frame, modality=modality,
                     heat_phrase=heat_phrase, heatmaps=heatmaps, what=what)
    finally:
        report_time("image", started)


def _image_panel(
    catalogue: Catalogue,
    get_backend: Callable[[], ViewerBackend | None],
    image: Any,
    *,
    key: str,
    image_path: Path | None,
    frame: int | None,
    modality: str | None,
    heat_phrase: str,
    heatmaps: bool,
    what: str,
) -> None:
    own = str(getattr(image, "modality", "") or "")
    modality = modality or own or None
    color = _is_color(image)
    array = np.asarray(image.array)
    if array.ndim - (1 if color else 0) not in (2, 3):
        st.error("This image cannot be shown: it is neither a 2D image nor a 3D volume.")
        return
    n = n_display_slices(array, color)
    slice_key, view_key = f"slice-{key}", f"view-{key}"
    index = 0
    if n > 1:
        st.session_state.setdefault(slice_key, n // 2 + 1)
        index = st.slider("Slice", 1, n, key=slice_key, help="Or scroll with the mouse wheel or the arrow keys "
                          "over the image.") - 1
    image_id = (key, str(image_path), frame)
    if color:  # RGB photographs / secondary captures: no window applies
        shown = render.thumbnail(render.to_uint8(array.astype(np.float64) / 255.0), render.DISPLAY_MAX_SIDE)
        src, shape = _ENCODED.get((*image_id, "colour"), lambda: png_data_uri(shown)), shown.shape[:2]
    else:
        src, shape = _grey_plane(catalogue, image, image_id, index, key, modality)
    note, layer, opacity = "", None, 0.0
    if image_path is not None and heatmaps and not color:
        h1, h2 = st.columns([3, 1])
        phrase = h1.text_input("Heatmap phrase", value=heat_phrase, key=f"phrase-{key}",
                               placeholder="e.g. left pleural effusion")
        opacity = h2.slider("Opacity", 0.0, 1.0, render.DEFAULT_OPACITY, 0.05, key=f"opacity-{key}")
        if phrase.strip():
            backend = get_backend()
            heat = None
            if backend is not None:
                try:
                    heat = backend.heatmap(image_path, phrase.strip(), frame)
                except Exception as exc:  # noqa: BLE001 - see show_failure
                    show_failure("No heatmap", exc)
            if heat is not None and heat.array is not None:
                heat2d = render.heat_for_plane(np.asarray(heat.array), array, index)
                if heat2d is not None:
                    # One scale over the whole image or volume: a slice the phrase does
                    # not concern stays untinted.
                    layer = _ENCODED.get((*image_id, index, "heat", phrase.strip()), lambda: png_data_uri(
                        render.heat_layer(heat2d, shape)))
                    note = heat.reason
            elif heat is not None:
                st.info(heat.reason or "No heatmap is available for this model.")
    slice_view(src, key=view_key, slice_index=index, n_slices=n, label=slice_label(image, index, n),
               alt=f"{what}{', ' + slice_label(image, index, n) if n > 1 else ''}", heat=layer, opacity=opacity,
               on_slice=lambda: _sync_slice(view_key, slice_key))
    if note:
        st.html(render.colour_bar_html("low relevance", "high relevance"))
        st.caption(f"Heatmap: {note} Colours are relative within this image.")
    facts = display_facts(image)
    if modality and modality != own:
        facts["Modality"] = f"{modality} (not recorded in the file)"
    if frame is not None:
        facts["Volume"] = str(frame + 1)
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))


def finding_display(name: str) -> str:
    """Human-readable name of a finding key (``pleural_effusion`` -> ``Pleural effusion``)."""
    from medvl.findings import load_findings

    for finding in load_findings():
        if finding.name == name:
            return finding.display
    return name.replace("_", " ").capitalize()


def labels_caption(labels: dict[str, int]) -> str:
    """The manifest labels of a case, positives and uncertain ones only (``""`` if none)."""
    present = [finding_display(k) for k, v in labels.items() if v == 1 and k != "no_finding"]
    uncertain = [finding_display(k) for k, v in labels.items() if v == -1]
    parts = []
    if present:
        parts.append("Labels: " + ", ".join(present))
    elif labels.get("no_finding") == 1:
        parts.append("Labels: No finding")
    if uncertain:
        parts.append("uncertain: " + ", ".join(uncertain))
    return " · ".join(parts)


def format_score(value: float, kind: str) -> str:
    """One format per kind everywhere: ``37%`` for a probability, ``85th`` for a percentile."""
    if kind == "probability":
        return f"{100.0 * value:.0f}%"
    n = round(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def scores_panel(scores: FindingScores | None, info: ModelInfo, *, withheld: str = "") -> None:
    """Finding scores of the query image, highest first, in the one form the model can back."""
    st.subheader("Findings")
    if withheld:
        st.caption(f"Finding scores are not shown: {withheld}")
        return
    if not scores or not scores.percentiles:
        st.caption("This model has no finding scores for this kind of image.")
        return
    prob, pct = scores.probabilities, scores.percentiles
    # Highest calibrated probability first, then the rest by percentile.
    names = sorted(pct, key=lambda f: (f not in prob, -prob.get(f, 0.0), -pct[f]))
    columns: dict[str, list[str]] = {"Finding": [finding_display(f) for f in names]}
    if prob:
        columns["Probability"] = [format_score(prob[f], "probability") if f in prob else "not calibrated"
                                  for f in names]
    columns["Percentile among indexed cases"] = [format_score(pct[f], "percentile") for f in names]
    # A plain table (HTML, read by screen readers and the browser test), not a canvas grid.
    import pandas as pd

    st.table(pd.DataFrame(columns).set_index("Finding"))
    st.caption(scores.note)


def model_caption(info: ModelInfo) -> str:
    """``Model: NAME · source: ... · licence: ...`` (what the page says about the model)."""
    parts = [f"Model: {info.name}"]
    if info.source:
        parts.append(f"source: {info.source}")
    if info.licence:
        parts.append(f"licence: {info.licence}")
    return " · ".join(parts)


def case_facts(case: Case) -> None:
    """The query case's modality, view and labels, under its title."""
    facts = [f for f in (case.modality, f"{case.view} view" if case.view else None) if f]
    caption = labels_caption(case.labels) or "Labels: none recorded"
    st.caption(" · ".join([*facts, caption]))


def case_report(case: Case) -> None:
    """The query case's report, sections in reading order (INDICATION ... IMPRESSION)."""
    from medvl.data.assertions import report_statements

    st.markdown("**Report**")
    st.markdown(render.report_html(report_statements(case.report)), unsafe_allow_html=True)


#: Thumbnails of hits by catalogue and image path (shared by every session).
_THUMBS = LRU(1024)
#: Makes the thumbnails of the hits just below the shown ones, so more results appear at once.
_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medvl-viewer-thumbs")


def _thumbnail(catalogue: Catalogue, path: str) -> np.ndarray | None:
    def make() -> np.ndarray | None:
        try:
            return _make_thumbnail(catalogue.read_image(Path(path)))
        except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not break the list
            log.warning("a thumbnail is unavailable: %s", type(exc).__name__)
            return None

    return _THUMBS.get((id(catalogue), path), make)


def prefetch_thumbnails(catalogue: Catalogue, hits: list[Case]) -> None:
    """Make the thumbnails of ``hits`` in the background (the next "more results" is then quick)."""
    for hit in hits:
        if hit.image_path is not None:
            _PREFETCH.submit(_thumbnail, catalogue, str(hit.image_path))


def _make_thumbnail(image: Any) -> np.ndarray:
    """A small 8-bit view of an image: the file's first window (or auto), middle slice."""
    array = np.asarray(image.array)
    if _is_color(image):
        return render.thumbnail(render.to_uint8(array.astype(np.float64) / 255.0))
    plane = render.fit_plane(render.display_plane(array, render.n_slices(array) // 2), 320)
    windows = getattr(image, "windows", None) or []
    if windows:
        (center, width), function = windows[0], getattr(image, "voi_function", "LINEAR")
    else:
        (center, width), function = render.auto_window(plane), "LINEAR"
    invert = str(getattr(image, "photometric_interpretation", "")).upper() == "MONOCHROME1"
    grey = render.window_to_uint8(plane, center, max(float(width), 1.0), invert=invert, function=function)
    return render.thumbnail(grey)


AGREEMENT_TEXT = {
    "agrees": "Report states it",
    "contradicts": "Report contradicts it (denied, uncertain or other side)",
    "silent": "Report does not mention it",
}


def _open_as_query(study_id: str) -> None:
    """Make a result the query: case mode, the case list found by its study id, the case picked."""
    st.session_state["mode"] = "Case from index"
    st.session_state["case_filter"] = study_id
    st.session_state["case_page"] = 1
    st.session_state["case_id"] = study_id


def results_panel(
    catalogue: Catalogue,
    backend: ViewerBackend,
    hits: list[Case],
    query: Query,
    *,
    query_assertions: list[Any],
    highlight: bool = True,
    reference: str = "",
    doubtful: bool = False,
) -> None:
    """Ranked hits: thumbnail, study id, match, labels, report with highlights, "open as query".

    With ``doubtful`` (the query was flagged as unlike the index) no match percentile is
    shown: a "typical match" figure next to that warning would contradict it.
    """
    from medvl.data.assertions import report_statements

    st.subheader(f"Top {len(hits)} similar cases")
    if not hits:
        st.info("No cases found.")
        return
    if reference and not doubtful:
        st.caption(reference)
    for rank, hit in enumerate(hits, start=1):
        with st.container(border=True):
            left, right = st.columns([1, 3])
            thumb = _thumbnail(catalogue, str(hit.image_path)) if hit.image_path else None
            if thumb is not None:
                left.image(thumb, width="stretch")
            else:
                left.caption("no image")
            left.button("Open as query", key=f"open-{rank}-{hit.study_id}", on_click=_open_as_query,
                        args=(hit.study_id,), width="stretch")
            match = ""
            if hit.relative is not None and not doubtful:
                match = f" · match {format_score(hit.relative, 'percentile')} percentile"
            if hit.score is not None:
                match += f" (cosine {hit.score:.3f})" if match else f" · cosine {hit.score:.3f}"
            right.markdown(f"**#{rank} · {render.markdown_escape(hit.study_id)}**{match}")
            facts = [f for f in (hit.modality, f"{hit.view} view" if hit.view else None,
                                 labels_caption(hit.labels) or None) if f]
            if facts:
                right.caption(" · ".join(facts))
            if hit.agreement:
                right.caption(AGREEMENT_TEXT.get(hit.agreement, hit.agreement))
            sentences = report_statements(hit.report)
            marks: set[int] = set()
            if highlight:
                scores = None
                if not query_assertions:
                    try:
                        scores = backend.sentence_scores(query, [s.text for s in sentences])
                    except Exception as exc:  # noqa: BLE001 - the report shows, just unhighlighted
                        log.warning("sentence scores unavailable: %s", type(exc).__name__)
                marks = render.highlight_marks(query_assertions, sentences, scores)
            right.markdown(render.report_html(sentences, marks), unsafe_allow_html=True)

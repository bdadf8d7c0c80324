"""Streamlit panels of the viewer: the image panel, the result list, zero-shot scores.

Each panel takes plain data (a backend, an image, cases) and draws; the decisions
(windows, slices, overlays, highlights) are in :mod:`medvl_viewer.render`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from medvl_viewer import render
from medvl_viewer.backend import Case, Query, ViewerBackend
from medvl_viewer.safe_meta import display_facts
from medvl.errors import MedvlError

log = logging.getLogger("medvl.viewer")


def failure_message(what: str, exc: BaseException, redact: tuple[str, ...] = ()) -> str:
    """``what: <error>``, with each string of ``redact`` replaced by ``<image>``.

    Corpus folder layouts often carry patient ids (MIMIC-CXR's ``files/p10/p10000032/``),
    so the viewer redacts an indexed case's image path from what it shows.
    """
    text = str(exc) if isinstance(exc, MedvlError) else f"unexpected {type(exc).__name__}: {exc}"
    for secret in sorted((r for r in redact if r), key=len, reverse=True):
        text = text.replace(secret, "<image>")
    return f"{what}: {text}"


def show_failure(what: str, exc: BaseException, redact: tuple[str, ...] = ()) -> None:
    """One clear message on the page; the traceback of an unexpected error goes to the server log.

    The viewer reads untrusted files: whatever a library raises, the page must show a
    message and keep working, never a traceback.
    """
    if not isinstance(exc, MedvlError):
        log.error("%s", what, exc_info=exc)
    st.error(failure_message(what, exc, redact))


RESEARCH_BANNER = (
    "**Research use only.** This viewer is not a medical device and must not be used "
    "for diagnosis or treatment decisions. Results come from a research model and may be wrong."
)

AUTO = "Auto (0.5-99.5 percentile)"
FILE_LUT = "VOI LUT in file"


def window_choices(image: Any, presets: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Windows offered for ``image``: those stored in the file, the modality presets, auto."""
    choices: dict[str, tuple[float, float]] = {}
    for i, (center, width) in enumerate(getattr(image, "windows", None) or []):
        choices[f"File window {i + 1}"] = (float(center), max(float(width), 1.0))
    choices.update(presets)
    choices[AUTO] = render.auto_window(image.array)
    return choices


def _is_color(image: Any) -> bool:
    return str(getattr(image, "photometric_interpretation", "")).upper() == "RGB"


def _grey_plane(
    backend: ViewerBackend, image: Any, plane: np.ndarray, key: str, modality: str | None
) -> np.ndarray:
    """Window controls (preset, level, width) and the windowed 8-bit plane."""
    invert = str(getattr(image, "photometric_interpretation", "")).upper() == "MONOCHROME1"
    choices = window_choices(image, backend.window_presets(modality))
    names = list(choices)
    luts = getattr(image, "voi_luts", None) or []
    if luts:  # a file's VOI LUT takes precedence over its windows, as in a PACS
        names.insert(0, FILE_LUT)
    preset = st.selectbox("Window preset", names, index=0, key=f"preset-{key}")
    if preset == FILE_LUT:
        from medvl.io import apply_voi_lut_table, invert_monochrome1

        out = apply_voi_lut_table(plane, luts[0])
        return render.to_uint8(invert_monochrome1(out) if invert else out)
    center0, width0 = choices[preset]
    c1, c2 = st.columns(2)
    # The preset is part of the key: choosing a preset resets level/width to it.
    center = c1.number_input("Level (center)", value=float(center0), step=10.0, key=f"level-{key}-{preset}")
    width = c2.number_input("Width", value=float(width0), min_value=1.0, step=10.0, key=f"width-{key}-{preset}")
    # The file's VOI function (e.g. SIGMOID) goes with the file's windows only.
    function = getattr(image, "voi_function", "LINEAR") if preset.startswith("File window") else "LINEAR"
    return render.window_to_uint8(plane, center, width, invert=invert, function=function)


def image_panel(
    backend: ViewerBackend,
    image: Any,
    *,
    key: str,
    heat_phrase: str | None = None,
    image_path: Path | None = None,
    caption: str = "",
    modality: str | None = None,
) -> None:
    """Draw an image with window presets, level/width, slice slider and phrase heatmap.

    Args:
        backend: used for window presets and the phrase heatmap.
        image: a ``medvl.io`` image.
        key: unique per image, so widgets reset to the new image's defaults.
        heat_phrase: default phrase of the heatmap (e.g. the text query).
        image_path: the image's file, for the heatmap.
        caption: shown under the image.
        modality: the modality to use when the file records none (NIfTI): it picks the
            window presets and is shown as such.
    """
    own = str(getattr(image, "modality", "") or "")
    modality = modality or own or None
    color = _is_color(image)
    array = np.asarray(image.array)
    if array.ndim - (1 if color else 0) not in (2, 3):
        st.error(f"Cannot display an image of shape {tuple(array.shape)} (expected a 2D image or a 3D volume).")
        return
    slices = n_display_slices(array, color)
    slice_index = 0
    if slices > 1:
        slice_index = st.slider("Slice", 0, slices - 1, slices // 2, key=f"slice-{key}")
    if color:  # RGB photographs / secondary captures: no window applies
        st.caption("Colour image: shown as stored, no window applies.")
        grey = render.to_uint8(np.asarray(array, dtype=np.float64) / 255.0)
    else:
        grey = _grey_plane(backend, image, render.display_plane(array, slice_index), key, modality)

    grey = render.thumbnail(grey, render.DISPLAY_MAX_SIDE)  # no-op for images already small
    shown = grey
    if image_path is not None and not color:
        phrase = st.text_input("Heatmap phrase", value=heat_phrase or "", key=f"phrase-{key}")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=f"opacity-{key}")
        if phrase.strip():
            try:
                heat = backend.heatmap(image_path, phrase.strip())
            except Exception as exc:  # noqa: BLE001 - see show_failure
                show_failure("Heatmap unavailable", exc)
                heat = None
            if heat is not None:
                heat2d = _heat_for_plane(np.asarray(heat), array, slice_index)
                if heat2d is not None:
                    # The backend's map is in [0, 1] over the whole image or volume: keep
                    # that scale, so a slice the phrase does not concern stays untinted.
                    shown = render.overlay_heatmap(grey, heat2d, opacity, rescale=False)
    st.image(shown, caption=caption or None, clamp=True, width="stretch")
    facts = display_facts(image)
    if modality and modality != own:
        facts["Modality"] = f"{modality} (not recorded in the file)"
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))


def n_display_slices(array: np.ndarray, color: bool) -> int:
    """Slices the slider offers: 1 for a 2D grey or RGB image, ``z`` for a volume."""
    return 1 if color else render.n_slices(array)


def _heat_for_plane(heat: np.ndarray, array: np.ndarray, slice_index: int) -> np.ndarray | None:
    """The 2D map to overlay on the shown plane, from a 2D or 3D patch-grid map."""
    if heat.ndim == 2:
        return heat
    if heat.ndim == 3 and array.ndim == 3:
        # (d, h, w) grid over the volume's axial slices: pick the proportional depth.
        d = round(slice_index * (heat.shape[0] - 1) / max(array.shape[2] - 1, 1))
        return heat[d]
    return None  # slice-pooling maps (n_slices,) have no in-plane detail to show


def finding_display(name: str) -> str:
    """Human-readable name of a finding key (``pleural_effusion`` -> ``Pleural effusion``)."""
    from medvl.findings import load_findings

    for finding in load_findings():
        if finding.name == name:
            return finding.display
    return name.replace("_", " ").capitalize()


def labels_caption(labels: dict[str, int]) -> str:
    """The manifest labels of a hit, positives and uncertain ones only (``""`` if none)."""
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


def zero_shot_panel(probs: dict[str, float] | None) -> None:
    """Finding probabilities for the query image, highest first."""
    st.subheader("Zero-shot findings")
    if not probs:
        st.info("Zero-shot scores are not available for this model.")
        return
    rows = sorted(probs.items(), key=lambda kv: -kv[1])
    st.dataframe(
        {"finding": [finding_display(k) for k, _ in rows], "score": [round(float(v), 3) for _, v in rows]},
        hide_index=True,
    )
    # Each score is a softmax between the finding's positive and negative prompts: it
    # ranks cases (that is what AUROC measures) but is not calibrated to prevalence.
    st.caption(
        "Scores are uncalibrated zero-shot model outputs (positive vs. negative prompt), "
        "useful for comparing cases, not probabilities of disease."
    )


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(_backend: ViewerBackend, path: str, backend_id: int) -> np.ndarray | None:
    try:
        return _make_thumbnail(_backend.read_image(Path(path)))
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not break the list
        log.warning("thumbnail of %s unavailable: %s", path, exc)
        return None


def _make_thumbnail(image: Any) -> np.ndarray:
    """A small 8-bit view of an image: the file's first window (or auto), middle slice."""
    array = np.asarray(image.array)
    if _is_color(image):
        return render.thumbnail(render.to_uint8(array.astype(np.float64) / 255.0))
    plane = render.display_plane(array, render.n_slices(array) // 2)
    windows = getattr(image, "windows", None) or []
    if windows:
        (center, width), function = windows[0], getattr(image, "voi_function", "LINEAR")
    else:
        (center, width), function = render.auto_window(plane), "LINEAR"
    invert = str(getattr(image, "photometric_interpretation", "")).upper() == "MONOCHROME1"
    grey = render.window_to_uint8(plane, center, max(float(width), 1.0), invert=invert, function=function)
    return render.thumbnail(grey)


def results_panel(backend: ViewerBackend, hits: list[Case], query: Query) -> None:
    """Ranked hits: rank, study id, similarity, thumbnail and highlighted report."""
    st.subheader(f"Top {len(hits)} similar cases")
    if not hits:
        st.info("No cases found.")
        return
    for rank, hit in enumerate(hits, start=1):
        with st.container(border=True):
            left, right = st.columns([1, 3])
            thumb = None
            if hit.image_path is not None:
                thumb = _thumbnail(backend, str(hit.image_path), id(backend))
            if thumb is not None:
                left.image(thumb, width="stretch")
            else:
                left.caption("no image")
            score = "" if hit.score is None else f" · similarity {hit.score:.3f}"
            right.markdown(f"**#{rank} · {render.markdown_escape(hit.study_id)}**{score}")
            sentences, line_ends = render.split_report(hit.report)
            try:
                scores = backend.sentence_scores(query, sentences)
            except Exception as exc:  # noqa: BLE001 - the report shows, just unhighlighted
                log.warning("sentence scores unavailable: %s", exc)
                scores = None
            right.markdown(render.highlight_html(sentences, scores, line_ends=line_ends), unsafe_allow_html=True)
            caption = labels_caption(hit.labels)
            if caption:
                right.caption(caption)

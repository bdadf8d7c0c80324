"""Display conversions for the viewer: windows, planes, heatmap overlay, highlights.

Pure numpy/PIL functions of arrays, so they are tested without Streamlit. Pixel data
arrives from ``medvl.io`` in physical units (HU for CT); turning it into 8-bit grey is
an explicit window step here, never a silent ``array / array.max()``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image


def window_to_uint8(
    array: np.ndarray, center: float, width: float, *, invert: bool = False, function: str = "LINEAR"
) -> np.ndarray:
    """Map physical values to 8-bit grey through a DICOM VOI window.

    The window itself is ``medvl.io.apply_window`` (PS3.3 C.11.2.1.2 ``LINEAR``, or the
    file's ``LINEAR_EXACT`` / ``SIGMOID``), giving [0, 1]; this scales to 0..255 and
    rounds. With ``LINEAR``, values at or below ``center - 0.5 - (width - 1) / 2`` become
    0 and values above ``center - 0.5 + (width - 1) / 2`` become 255. Run it after the
    modality LUT (``medvl.io`` arrays already are in physical units).

    Args:
        array: physical values, any shape.
        center: window centre (level).
        width: window width, at least 1 for ``LINEAR``.
        invert: flip grey levels afterwards (MONOCHROME1, where high values are dark);
            inversion follows the window, as the presentation LUT follows the VOI LUT.
        function: the VOI LUT function.

    Returns:
        ``uint8`` array of the same shape.

    Raises:
        ValueError: if ``width`` is out of range for ``function``.
    """
    from medvl.io import apply_window, invert_monochrome1

    out = apply_window(array, float(center), float(width), function)  # type: ignore[arg-type]
    if invert:
        out = invert_monochrome1(out)
    return to_uint8(out)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] (grey or RGB) to ``uint8`` 0..255, rounded."""
    return np.rint(np.clip(np.asarray(display, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


#: Values :func:`auto_window` looks at, at most (a strided sample of larger images).
AUTO_WINDOW_SAMPLE = 1 << 21


def auto_window(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """A window spanning the ``low``..``high`` percentiles, for images with no window.

    A volume or detector-sized image is sampled with a fixed stride down to
    :data:`AUTO_WINDOW_SAMPLE` values (a display window needs no exact percentile).

    Returns:
        ``(center, width)`` with width at least 1.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.size > AUTO_WINDOW_SAMPLE:
        flat = flat[:: -(-flat.size // AUTO_WINDOW_SAMPLE)]
    finite = flat.astype(np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    width = max(float(hi - lo), 1.0)
    return float(lo + (hi - lo) / 2.0), width


def n_slices(array: np.ndarray) -> int:
    """Number of axial slices the slice slider offers: ``z`` for a volume, 1 for 2D."""
    return int(array.shape[2]) if array.ndim == 3 else 1


def display_plane(array: np.ndarray, slice_index: int = 0) -> np.ndarray:
    """The 2D plane to show, in radiological display orientation.

    A 2D image ``(rows, cols)`` is shown as stored. A volume is ``(x, y, z)`` in RAS+
    (``medvl.io`` reorients NIfTI and DICOM series to it: +x is the patient's right, +y
    anterior), so an axial slice is shown as a radiologist reads it: anterior at the top
    (rows run along -y) and the patient's right on the viewer's left (columns run along
    -x). This is the ``(z, -y, -x)`` layout of the model input
    (``medvl.data.transforms.to_display_axes_3d``), so a heatmap slice lines up with it.

    Args:
        array: ``(rows, cols)`` or ``(x, y, z)``.
        slice_index: axial slice of a volume, clipped to the valid range.

    Returns:
        A 2D array ``(rows, cols)``.
    """
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D volume, got shape {array.shape}")
    z = int(np.clip(slice_index, 0, array.shape[2] - 1))
    return np.ascontiguousarray(array[::-1, ::-1, z].T)


def fit_plane(plane: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a 2D plane (physical units) so its longest side is at most ``max_side``.

    Area averaging (PIL ``BOX``), done before the window so that a window change on a
    large radiograph costs the display size, not the detector size. Smaller planes pass
    through unchanged.
    """
    rows, cols = plane.shape[:2]
    scale = max_side / max(rows, cols)
    if scale >= 1.0:
        return plane
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.float32)


def slice_position_mm(image: Any, slice_index: int) -> float | None:
    """The patient z coordinate (mm, superior positive) of a volume slice's centre.

    ``medvl.io`` volumes are ``(x, y, z)`` in RAS+ with a voxel-to-RAS ``affine``; the
    slice centre is voxel ``((nx - 1) / 2, (ny - 1) / 2, slice_index)``. ``None`` for a
    2D image (no affine).
    """
    affine = getattr(image, "affine", None)
    array = getattr(image, "array", None)
    if affine is None or array is None or np.ndim(array) != 3:
        return None
    nx, ny = np.shape(array)[:2]
    centre = np.asarray(affine, dtype=np.float64) @ np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, slice_index, 1.0])
    return float(centre[2])


def heat_for_plane(heat: np.ndarray, array: np.ndarray, slice_index: int) -> np.ndarray | None:
    """The 2D map to overlay on the shown plane, from a 2D or 3D map over the image.

    A 3D map is ``(d, h, w)`` over the volume's axial slices in display layout
    (:func:`display_plane`); slice ``slice_index`` of the volume's ``z`` slices takes
    map slice ``round(slice_index * (d - 1) / (z - 1))``.
    """
    if heat.ndim == 2:
        return heat
    if heat.ndim == 3 and array.ndim == 3:
        d = round(slice_index * (heat.shape[0] - 1) / max(array.shape[2] - 1, 1))
        return heat[d]
    return None  # slice-pooling maps (n_slices,) have no in-plane detail to show


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a coarse 2D map ``(h, w)`` to ``shape`` ``(rows, cols)``."""
    img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


#: The heatmap's colour map: perceptually uniform (lightness rises steadily with the
#: value), readable by colour-blind users, unlike "jet".
HEATMAP_CMAP = "inferno"
#: Default heatmap opacity: the anatomy under the hottest region stays readable.
DEFAULT_OPACITY = 0.35
#: Relevance below this shows no colour at all (the image stays untouched there).
HEAT_FLOOR = 0.2


@lru_cache(maxsize=4)
def colormap_lut(name: str = HEATMAP_CMAP) -> np.ndarray:
    """The colour map as a ``(256, 3)`` float table in [0, 1] (matplotlib's own values)."""
    from matplotlib import colormaps

    return np.asarray(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32)


def colorize(values: np.ndarray, name: str = HEATMAP_CMAP) -> np.ndarray:
    """Values in [0, 1] ``(...)`` to RGB ``(..., 3)`` in [0, 1] through :func:`colormap_lut`."""
    lut = colormap_lut(name)
    idx = np.rint(np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0).astype(np.intp)
    return lut[idx]


def heat_weight(scaled: np.ndarray, opacity: float) -> np.ndarray:
    """Blend weight of the colour per pixel: 0 below :data:`HEAT_FLOOR`, ``opacity`` at 1."""
    return opacity * np.clip((scaled - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)


def overlay_heatmap(grey: np.ndarray, heat: np.ndarray, opacity: float, *, rescale: bool = True) -> np.ndarray:
    """Blend a heatmap over a grey image.

    With ``rescale`` the map is min-max scaled to [0, 1] (a constant map becomes 0: "no
    preference"); without, it is taken as already in [0, 1] (clipped), which keeps one
    scale across the slices of a volume. It is then resized to the image (bilinear:
    the map covers the image region exactly, row 0 on row 0) and coloured with
    :data:`HEATMAP_CMAP`; each pixel becomes ``(1 - w) * grey + w * colour(h)`` with
    ``w = heat_weight(h, opacity)``, so low-relevance regions keep the original grey.

    Args:
        grey: ``uint8`` ``(rows, cols)``.
        heat: ``(h, w)`` relevance map over the image (any resolution, same aspect).
        opacity: 0 (image only) .. 1 (full colour where relevance is highest).
        rescale: min-max scale ``heat`` first (else it must already be in [0, 1]).

    Returns:
        ``uint8`` RGB ``(rows, cols, 3)``.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    if rescale:
        span = float(heat.max() - heat.min())
        scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    else:
        scaled = np.clip(heat, 0.0, 1.0)
    scaled = np.clip(resize_map(scaled, grey.shape[:2]), 0.0, 1.0)
    base = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    weight = heat_weight(scaled, opacity)[..., None]
    out = (1.0 - weight) * base + weight * colorize(scaled)
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


#: Longest side of the heatmap layer sent to the page (the browser scales it up, bilinear).
HEAT_LAYER_SIDE = 256


def heat_layer(heat: np.ndarray, shape: tuple[int, int], max_side: int = HEAT_LAYER_SIDE) -> np.ndarray:
    """A 2D relevance map in [0, 1] as the 8-bit layer the page paints over an image of ``shape``.

    The map is resized (bilinear, like :func:`overlay_heatmap`) to the image's aspect with
    its longest side at most ``max_side``; values are clipped to [0, 1] (one scale across
    a volume's slices) and quantised to 0..255.
    """
    rows, cols = int(shape[0]), int(shape[1])
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    return to_uint8(np.clip(resize_map(np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0), size),
                            0.0, 1.0))


def colour_bar_html(low: str = "low", high: str = "high", *, name: str = HEATMAP_CMAP, stops: int = 11) -> str:
    """A horizontal colour bar of the heatmap's colour map with its end labels, as HTML.

    The grey start stands for "below the floor: no colour drawn" (:data:`HEAT_FLOOR`).
    """
    cols = np.rint(colorize(np.linspace(HEAT_FLOOR, 1.0, stops), name) * 255).astype(int)
    grad = ", ".join(f"rgb({r},{g},{b}) {100 * i / (stops - 1):.0f}%" for i, (r, g, b) in enumerate(cols))
    return (
        '<div data-testid="heat-colour-bar" style="display:flex;align-items:center;gap:0.5em;font-size:0.8em">'
        f"<span>{html.escape(low)}</span>"
        f'<div role="img" aria-label="heatmap colour scale from {html.escape(low)} to {html.escape(high)}" '
        f'style="flex:1;height:0.8em;border-radius:2px;background:linear-gradient(to right, {grad})"></div>'
        f"<span>{html.escape(high)}</span></div>"
    )


#: Longest side of the image the page shows; a radiograph is downscaled to it before
#: the heatmap overlay, since the browser column is narrower anyway.
DISPLAY_MAX_SIDE = 1024


def thumbnail(image: np.ndarray, max_side: int = 160) -> np.ndarray:
    """Downscale an 8-bit grey or RGB image so its longest side is at most ``max_side``."""
    pil = Image.fromarray(image)
    pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(pil)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~$])")


def markdown_escape(text: str) -> str:
    """Backslash-escape Markdown (and HTML angle brackets) so ``text`` shows literally."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


#: Report sections in the order a radiologist reads them; others follow in report order.
READING_ORDER = ("examination", "indication", "technique", "comparison", "findings", "impression")
SECTION_TITLES = {"preamble": "Report", "wet_read": "Wet read"}


def in_reading_order(sections: Iterable[str]) -> list[str]:
    """Section keys as a radiologist reads them: INDICATION, COMPARISON, FINDINGS, IMPRESSION..."""
    keys = list(dict.fromkeys(sections))
    return [k for k in READING_ORDER if k in keys] + [k for k in keys if k not in READING_ORDER]


def highlight_marks(
    query: Sequence[Any], sentences: Sequence[Any], scores: Sequence[float] | None = None, n_top: int = 2
) -> set[int]:
    """Which report sentences to highlight for a query.

    Only FINDINGS and IMPRESSION sentences are candidates (INDICATION and COMPARISON say
    why the study was done, not what it shows). When the query states findings
    (``medvl.data.assertions.find_assertions``), a sentence is highlighted when it backs
    one of them: same finding, same status, same side (``assertions.supports``), so
    "There is no pneumothorax." is never marked for "left pneumothorax". When the query
    states none, the ``n_top`` best-``scores`` sentences that state something present
    are marked (never a negated or normal-study sentence), if any beats the weakest.

    Args:
        query: the query's assertions (may be empty).
        sentences: ``medvl.data.assertions.ReportSentence`` of the report.
        scores: per-sentence similarity to the query, for the fallback.
        n_top: most sentences marked by the fallback.
    """
    from medvl.data.assertions import supports

    main = [i for i, s in enumerate(sentences) if s.main]
    if query:
        return {i for i in main if supports(query, sentences[i].assertions)}
    if scores is None or n_top <= 0:
        return set()
    if len(scores) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(scores)} scores")
    stating = [i for i in main if any(a.status == "present" for a in sentences[i].assertions)]
    if not stating:
        return set()
    values = np.asarray(scores, dtype=np.float64)
    floor = values[main].min()
    order = sorted(stating, key=lambda i: -values[i])
    return {i for i in order[:n_top] if values[i] > floor}


def report_html(sentences: Sequence[Any], marks: set[int] | None = None) -> str:
    """A report as HTML, one paragraph per section in reading order, marked sentences in ``<mark>``.

    Args:
        sentences: ``medvl.data.assertions.ReportSentence`` in report order.
        marks: indices of sentences to highlight.
    """
    marks = marks or set()
    by_section: dict[str, list[int]] = {}
    for i, s in enumerate(sentences):
        by_section.setdefault(s.section, []).append(i)
    parts = []
    for section in in_reading_order(by_section):
        title = SECTION_TITLES.get(section, section.replace("_", " ").upper())
        body = " ".join(
            f"<mark>{html.escape(sentences[i].text)}</mark>" if i in marks else html.escape(sentences[i].text)
            for i in by_section[section]
        )
        parts.append(f"<p style='margin:0 0 0.3em 0'><b>{html.escape(title)}:</b> {body}</p>")
    return "".join(parts) or "<p>(no report)</p>"

"""Display conversions for the viewer: windows, planes, heatmap overlay, highlights.

Pure numpy/PIL functions of arrays, so they are tested without Streamlit. Pixel data
arrives from ``medvl.io`` in physical units (HU for CT); turning it into 8-bit grey is
an explicit window step here, never a silent ``array / array.max()``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

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


def auto_window(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """A window spanning the ``low``..``high`` percentiles, for images with no window.

    Returns:
        ``(center, width)`` with width at least 1.
    """
    finite = np.asarray(array, dtype=np.float64)
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


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a coarse 2D map ``(h, w)`` to ``shape`` ``(rows, cols)``."""
    img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def _jet(values: np.ndarray) -> np.ndarray:
    """A 'jet'-like colour ramp (blue -> cyan -> yellow -> red) for values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.concatenate([r, g, b], axis=-1)


def overlay_heatmap(grey: np.ndarray, heat: np.ndarray, opacity: float, *, rescale: bool = True) -> np.ndarray:
    """Blend a heatmap over a grey image.

    With ``rescale`` the map is min-max scaled to [0, 1] (a constant map becomes 0: "no
    preference"); without, it is taken as already in [0, 1] (clipped), which keeps one
    scale across the slices of a volume. It is then resized to the image and coloured;
    each pixel becomes
    ``(1 - opacity * h) * grey + opacity * h * colour(h)`` so that low-relevance regions
    keep the original grey and only relevant ones are tinted.

    Args:
        grey: ``uint8`` ``(rows, cols)``.
        heat: ``(h, w)`` relevance map on the model's patch grid.
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
    weight = (opacity * scaled)[..., None]
    out = (1.0 - weight) * base + weight * _jet(scaled)
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


#: Longest side of the image the page shows; a radiograph is downscaled to it before
#: the heatmap overlay, since the browser column is narrower anyway.
DISPLAY_MAX_SIDE = 1024


def thumbnail(image: np.ndarray, max_side: int = 160) -> np.ndarray:
    """Downscale an 8-bit grey or RGB image so its longest side is at most ``max_side``."""
    pil = Image.fromarray(image)
    pil.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(pil)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~$])")


def markdown_escape(text: str) -> str:
    """Backslash-escape Markdown (and HTML angle brackets) so ``text`` shows literally."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences on ``.``, ``!``, ``?`` followed by whitespace, and on line ends."""
    return split_report(text)[0]


def split_report(text: str) -> tuple[list[str], set[int]]:
    """Sentences of a report and the indices of those that end a line (a section, say).

    Returns:
        ``(sentences, line_ends)``: a line break follows sentence ``i`` for ``i`` in
        ``line_ends`` (the last sentence is never listed).
    """
    sentences: list[str] = []
    line_ends: set[int] = set()
    for line in text.splitlines():
        parts = [p.strip() for p in _SENTENCE_END.split(line.strip()) if p.strip()]
        if parts:
            sentences.extend(parts)
            line_ends.add(len(sentences) - 1)
    line_ends.discard(len(sentences) - 1)
    return sentences, line_ends


def highlight_html(
    sentences: Sequence[str], scores: Sequence[float] | None, n_top: int = 2, line_ends: set[int] | None = None
) -> str:
    """Report text as HTML with the best-scoring sentences in ``<mark>``.

    At most ``n_top`` sentences are marked, and only those scoring above the report's
    lowest-scoring sentence.

    Report text is escaped, so markup in a report can never inject into the page.

    Args:
        sentences: the report's sentences in order.
        scores: one similarity per sentence (higher = better match), or None for no
            highlight.
        n_top: how many sentences to highlight.
        line_ends: indices of sentences followed by a line break (see :func:`split_report`).

    Returns:
        An HTML fragment.
    """
    if scores is not None and len(scores) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(scores)} scores")
    top: set[int] = set()
    if scores is not None and n_top > 0 and len(scores):
        values = np.asarray(scores, dtype=np.float64)
        # Only sentences that beat the report's weakest one: with equal scores there is
        # no best match, and a two-sentence report gets one highlight, not two.
        order = [int(i) for i in np.argsort(-values, kind="stable") if values[i] > values.min()]
        top = set(order[:n_top])
    out = ""
    for i, sentence in enumerate(sentences):
        text = html.escape(sentence)
        out += f"<mark>{text}</mark>" if i in top else text
        if i < len(sentences) - 1:
            out += "<br>" if line_ends and i in line_ends else " "
    return out

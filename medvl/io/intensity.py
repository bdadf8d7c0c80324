"""Intensity steps, each a pure function with its order written down.

The order a PACS uses (DICOM PS3.4 N.2) is::

    stored values -> modality LUT (reader)  -> physical units (HU for CT)
                  -> VOI LUT or window      -> [0, 1] display values
                  -> MONOCHROME1 inversion  -> [0, 1], high = bright
                  -> normalize              -> model input

The reader (:func:`medvl.io.read_image`) does only the first step. Everything after
is explicit: :func:`apply_window` / :func:`apply_voi_lut_table` / :func:`window_image`,
then :func:`invert_monochrome1`, then :func:`normalize`. :func:`to_display` chains
the display steps for an image.
"""

from __future__ import annotations

import functools
import warnings
from importlib import resources
from typing import Literal

import numpy as np
import yaml

from medvl.errors import ConfigError, ImageReadError
from medvl.io.image import MedicalImage, VoiLut

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
NormalizeMethod = Literal["zscore", "minmax", "percentile", "none"]


@functools.lru_cache(maxsize=1)
def window_presets() -> dict[str, tuple[float, float]]:
    """Named windows from ``medvl/resources/window_presets.yaml`` as ``{name: (center, width)}``."""
    text = resources.files("medvl.resources").joinpath("window_presets.yaml").read_text("utf-8")
    raw = yaml.safe_load(text) or {}
    out: dict[str, tuple[float, float]] = {}
    for name, item in raw.items():
        try:
            out[str(name)] = (float(item["center"]), float(item["width"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                "window preset needs numeric 'center' and 'width'",
                path="medvl/resources/window_presets.yaml", field=str(name),
            ) from None
    return out


def get_preset(name: str) -> tuple[float, float]:
    """Return ``(center, width)`` of a named preset (``lung``, ``bone``, ...).

    Raises:
        ConfigError: unknown name; the message lists the known presets.
    """
    presets = window_presets()
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in presets:
        raise ConfigError(
            f"unknown window preset {name!r}", field="window",
            expected="one of " + ", ".join(sorted(presets)),
        )
    return presets[key]


def apply_window(
    array: np.ndarray, center: float, width: float, function: VoiFunction = "LINEAR"
) -> np.ndarray:
    """Map physical values through a VOI window to display values in ``[0, 1]``.

    Run after the modality LUT (i.e. on :attr:`MedicalImage.array`) and before
    :func:`invert_monochrome1`. Formulas are those of DICOM PS3.3 C.11.2.1.2
    (``LINEAR``), C.11.2.1.3.2 (``LINEAR_EXACT``) and C.11.2.1.3.1 (``SIGMOID``),
    with output range ``[0, 1]``.

    Args:
        array: values in physical units (any shape).
        center: window center, same units as ``array``.
        width: window width; ``>= 1`` for LINEAR, ``> 0`` otherwise.
        function: the VOI LUT Function.

    Returns:
        float32 array of the same shape with values in ``[0, 1]``.

    Raises:
        ValueError: width out of range or unknown function.
    """
    x = np.asarray(array, dtype=np.float32)
    function = str(function).upper()  # type: ignore[assignment]
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width must be >= 1 for LINEAR windowing, got {width}")
        c, w = float(center) - 0.5, float(width) - 1.0
        if w == 0:  # width 1: a hard threshold
            return (x > c).astype(np.float32)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        c, w = float(center), float(width)
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 0, the right limit
            out = 1.0 / (1.0 + np.exp(-4.0 * (x - float(center)) / float(width)))
        return out.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unknown VOI LUT function {function!r} (LINEAR, LINEAR_EXACT, SIGMOID)")
    # (x - c) / w + 0.5 computed in place in one new buffer: radiographs are millions
    # of pixels and temporaries dominate the cost
    out = np.subtract(x, np.float32(c), dtype=np.float32)
    out /= np.float32(w)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def apply_voi_lut_table(array: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Map physical values through a VOI LUT table (PS3.3 C.11.2.1.1) to ``[0, 1]``.

    Values below ``first_mapped`` take the first entry, values past the end take
    the last (as in pydicom's ``apply_voi``); the result is divided by
    ``2**bits - 1``. Run after the modality LUT.
    """
    x = np.asarray(array)
    n = len(lut.data)
    index = np.clip(np.floor(x - lut.first_mapped), 0, n - 1).astype(np.intp)
    return (lut.data[index].astype(np.float32) / float(2**lut.bits - 1)).astype(np.float32)


def invert_monochrome1(display: np.ndarray) -> np.ndarray:
    """Invert MONOCHROME1 display values so that high means bright.

    MONOCHROME1 stores low values as white. Inversion must come *after*
    windowing (PS3.4 N.2.1: the presentation LUT follows the VOI LUT), on values
    in ``[0, 1]``; inverting raw values would move the window.
    """
    return np.subtract(np.float32(1.0), np.asarray(display, dtype=np.float32), dtype=np.float32)


def full_range_window(array: np.ndarray) -> tuple[float, float]:
    """A window spanning the finite data range, for images that store none."""
    finite = np.asarray(array)[np.isfinite(array)]
    if finite.size == 0:
        return 0.5, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo + hi) / 2.0 + 0.5, max(hi - lo + 1.0, 1.0)


def window_image(
    image: MedicalImage,
    window: str | tuple[float, float] | None = "file",
) -> np.ndarray:
    """Apply a VOI step to an image, giving display values in ``[0, 1]`` (not inverted).

    Args:
        image: a grayscale image from :func:`read_image`.
        window: ``"file"`` (the file's VOI LUT if any, else its first window, else
            the full data range), ``"file:<i>"`` / ``"file:<explanation>"`` (one of
            the file's windows by index or by its WindowCenterWidthExplanation, e.g.
            ``"file:LUNG"``), ``"full"`` (data range), a preset name (``"lung"``...),
            or an explicit ``(center, width)``. ``None`` means ``"file"``.

    Raises:
        ImageReadError: the image is colour (windowing is for grayscale).
        ConfigError: unknown preset name.
    """
    if image.is_color:
        raise ImageReadError(
            "windowing applies to grayscale images only", path=image.path,
            field="PhotometricInterpretation", expected="MONOCHROME1 or MONOCHROME2",
        )
    if window is None or window == "file":
        if image.voi_luts:
            return apply_voi_lut_table(image.array, image.voi_luts[0])
        if image.windows:
            c, w = image.windows[0]
            if w >= 1 or image.voi_function != "LINEAR":
                return apply_window(image.array, c, w, image.voi_function)  # type: ignore[arg-type]
            # PS3.3 C.11.2.1.2.1 requires width >= 1 for LINEAR; a file breaking that
            # should not stop a training run over one display setting
            warnings.warn(f"{image.path}: stored window width {w} < 1 is invalid for LINEAR; "
                          "using the full data range", stacklevel=2)
        c, w = full_range_window(image.array)
        return apply_window(image.array, c, w)
    if window == "full":
        c, w = full_range_window(image.array)
        return apply_window(image.array, c, w)
    if isinstance(window, str) and window.startswith("file:"):
        c, w = file_window(image, window[5:])
        return apply_window(image.array, c, w, image.voi_function)  # type: ignore[arg-type]
    if isinstance(window, str):
        c, w = get_preset(window)
        return apply_window(image.array, c, w)
    c, w = window
    return apply_window(image.array, float(c), float(w))


def file_window(image: MedicalImage, which: str | int) -> tuple[float, float]:
    """One of the file's windows, by index or by WindowCenterWidthExplanation.

    Raises:
        ConfigError: no such window; the message lists what the file has.
    """
    explanations = image.tags.get("WindowCenterWidthExplanation") or []
    if isinstance(explanations, str):
        explanations = [explanations]
    names = [str(e).strip().upper() for e in explanations]
    key = str(which).strip()
    if key.lstrip("-").isdigit() and -len(image.windows) <= int(key) < len(image.windows):
        return image.windows[int(key)]
    if key.upper() in names and names.index(key.upper()) < len(image.windows):
        return image.windows[names.index(key.upper())]
    listed = ", ".join(f"{i}{'=' + names[i] if i < len(names) else ''}" for i in range(len(image.windows)))
    raise ConfigError(f"no window {which!r} in the file", path=image.path, field="window",
                      expected=f"one of: {listed}" if listed else "a file with WindowCenter/WindowWidth")


def to_display(
    image: MedicalImage, window: str | tuple[float, float] | None = "file"
) -> np.ndarray:
    """Display values in ``[0, 1]`` where high is bright: window, then MONOCHROME1 inversion.

    Colour images are scaled by the range of their RGB values instead (``/ 255`` for
    8-bit, ``/ 65535`` for 16-bit palette lookup tables).
    """
    if image.is_color:
        bits = int(image.tags.get("color_bits") or image.tags.get("BitsStored") or 8)
        return np.clip(image.array / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
    out = window_image(image, window)
    if image.photometric_interpretation == "MONOCHROME1":
        out = invert_monochrome1(out)
    return out


def normalize(
    array: np.ndarray,
    method: NormalizeMethod = "zscore",
    *,
    lower: float = 0.5,
    upper: float = 99.5,
    eps: float = 1e-6,
) -> np.ndarray:
    """Scale intensities for a model input.

    Run last, on display values (after :func:`to_display`) or on physical values.

    Args:
        array: input values.
        method: ``"zscore"`` (zero mean, unit std over finite values), ``"minmax"``
            (to ``[0, 1]``), ``"percentile"`` (``lower``..``upper`` percentiles to
            ``[0, 1]``, clipped) or ``"none"``.
        lower: lower percentile for ``"percentile"``.
        upper: upper percentile for ``"percentile"``.
        eps: guards against division by zero on constant images.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(array, dtype=np.float32)
    if method == "none":
        return x
    mask = np.isfinite(x)
    finite = x if mask.all() else x[mask]  # copy only when there is something to drop
    if finite.size == 0:
        raise ValueError("cannot normalize an array with no finite values")
    if method == "zscore":
        # float32 pairwise sums are accurate to ~1e-6 here and twice as fast as float64
        mean = float(finite.mean())
        std = float(finite.std())
        lo, scale = mean, 1.0 / max(std, eps)
    elif method in ("minmax", "percentile"):
        if method == "minmax":
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = (float(v) for v in np.percentile(finite, [lower, upper]))
        scale = 1.0 / max(hi - lo, eps)
    else:
        raise ValueError(f"unknown normalize method {method!r} (zscore, minmax, percentile, none)")
    out = np.subtract(x, np.float32(lo), dtype=np.float32)
    out *= np.float32(scale)
    if method == "percentile":
        np.clip(out, 0.0, 1.0, out=out)
    return out

"""MONAI-compatible transforms over medvl's reader and display steps.

Array transforms (:class:`LoadMedicalImage`, :class:`Window`, :class:`InvertMonochrome1`,
:class:`ToDisplay`, :class:`Normalize`) and their dictionary wrappers (``...d``) work in
a ``monai.transforms.Compose``. The loader returns a ``MetaTensor`` whose ``affine``
is the RAS+ affine (so MONAI's ``Spacing`` / ``Orientation`` apply) and whose meta
carries ``modality``, ``photometric_interpretation``, the file's first window
(``window_center``, ``window_width``), ``voi_function``, ``spacing`` and the
non-identifying ``tags`` (JSON), with the same keys for every file so batches collate. :class:`MedvlImageReader` plugs
medvl's reader into MONAI's own ``LoadImage``.

This module imports MONAI and torch, so :mod:`medvl.io` loads it lazily.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform, Transform

from medvl.io.image import MedicalImage
from medvl.io.intensity import (
    NormalizeMethod,
    apply_window,
    full_range_window,
    get_preset,
    invert_monochrome1,
    normalize,
)
from medvl.io.reader import RASTER_SUFFIXES, read_image

WindowSpec = str | tuple[float, float] | None


def image_meta(image: MedicalImage) -> dict[str, Any]:
    """MetaTensor meta of an image: affine, spacing, display facts, safe tags.

    Every image gets the same keys with fixed-shape values (the first window as two
    floats, NaN when the file has none; the tags as a JSON string), so MONAI's
    ``list_data_collate`` can batch images from different files.
    """
    if image.affine is not None:
        affine = np.asarray(image.affine, dtype=np.float64)
    else:  # 2D: pixel sizes on the first two axes
        affine = np.diag([float(image.spacing[0]), float(image.spacing[1]), 1.0, 1.0])
    center, width = image.windows[0] if image.windows else (float("nan"), float("nan"))
    return {
        "affine": torch.as_tensor(affine, dtype=torch.float64),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(image.array.shape[: 3 if image.affine is not None else 2]),
        "spacing": np.asarray(image.spacing, dtype=np.float64),
        "modality": image.modality,
        "photometric_interpretation": image.photometric_interpretation,
        "window_center": float(center),
        "window_width": float(width),
        "voi_function": image.voi_function,
        "tags": json.dumps(image.tags, default=str, sort_keys=True),
        "filename_or_obj": str(image.path) if image.path else "",
    }


def _channel_first(array: np.ndarray, is_color: bool) -> np.ndarray:
    return np.moveaxis(array, -1, 0) if is_color else array[None]


class LoadMedicalImage(Transform):
    """Read a path with :func:`medvl.io.read_image` into a ``MetaTensor``.

    Args:
        ensure_channel_first: add a channel axis (colour moves RGB to the front).
        image_only: return only the tensor (else ``(tensor, meta)``).
        **read_options: passed to :func:`read_image` (``max_voxels``, ``frame``...).
    """

    def __init__(self, ensure_channel_first: bool = True, image_only: bool = True, **read_options: Any) -> None:
        self.ensure_channel_first = ensure_channel_first
        self.image_only = image_only
        self.read_options = read_options

    def __call__(self, path: str | Path) -> MetaTensor | tuple[MetaTensor, dict[str, Any]]:
        image = read_image(path, **self.read_options)
        meta = image_meta(image)
        array = _channel_first(image.array, image.is_color) if self.ensure_channel_first else image.array
        tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=meta)  # meta holds the affine
        return tensor if self.image_only else (tensor, meta)


def _meta_of(img: Any) -> dict[str, Any]:
    return dict(img.meta) if isinstance(img, MetaTensor) else {}


def _like(result: np.ndarray, img: Any) -> Any:
    """Return ``result`` as the input's type (MetaTensor keeps its meta and affine)."""
    if isinstance(img, MetaTensor):
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(result)), meta=dict(img.meta))
    if isinstance(img, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(result)).to(img.device)
    return result


def _to_numpy(img: Any) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        return img.detach().cpu().numpy() if not isinstance(img, MetaTensor) else img.as_tensor().detach().cpu().numpy()
    return np.asarray(img)


class Window(Transform):
    """VOI window to ``[0, 1]`` (PS3.3 C.11.2.1.2); run after loading, before inversion.

    Args:
        window: ``"file"`` (the window in the MetaTensor meta, else the data range),
            ``"full"``, a preset name (``"lung"``...) or ``(center, width)``.
    """

    def __init__(self, window: WindowSpec = "file") -> None:
        if isinstance(window, str) and window not in ("file", "full"):
            get_preset(window)  # unknown names fail at construction, not mid-epoch
        self.window = window

    def __call__(self, img: Any) -> Any:
        array = _to_numpy(img)
        meta = _meta_of(img)
        function = str(meta.get("voi_function", "LINEAR"))
        if self.window in (None, "file"):
            c, w = float(meta.get("window_center", np.nan)), float(meta.get("window_width", np.nan))
            # no stored window, or one LINEAR cannot use (width < 1): the data range
            if not (np.isfinite(c) and np.isfinite(w)) or (w < 1 and function == "LINEAR"):
                (c, w), function = full_range_window(array), "LINEAR"
        elif self.window == "full":
            (c, w), function = full_range_window(array), "LINEAR"
        elif isinstance(self.window, str):
            (c, w), function = get_preset(self.window), "LINEAR"
        else:
            (c, w), function = self.window, "LINEAR"
        return _like(apply_window(array, float(c), float(w), function), img)  # type: ignore[arg-type]


class InvertMonochrome1(Transform):
    """``1 - x`` for MONOCHROME1 images (from meta, or ``force=True``); run after :class:`Window`."""

    def __init__(self, force: bool = False) -> None:
        self.force = force

    def __call__(self, img: Any) -> Any:
        if self.force or _meta_of(img).get("photometric_interpretation") == "MONOCHROME1":
            return _like(invert_monochrome1(_to_numpy(img)), img)
        return img


class ToDisplay(Transform):
    """:class:`Window` then :class:`InvertMonochrome1`: display values, high = bright."""

    def __init__(self, window: WindowSpec = "file") -> None:
        self.window = Window(window)
        self.invert = InvertMonochrome1()

    def __call__(self, img: Any) -> Any:
        return self.invert(self.window(img))


class Normalize(Transform):
    """Model-input scaling with :func:`medvl.io.normalize` (``zscore``, ``minmax``, ``percentile``)."""

    def __init__(self, method: NormalizeMethod = "zscore", **kwargs: float) -> None:
        self.method = method
        self.kwargs = kwargs

    def __call__(self, img: Any) -> Any:
        return _like(normalize(_to_numpy(img), self.method, **self.kwargs), img)


class _Dict(MapTransform):
    """Apply an array transform to every key (MONAI dictionary-transform convention)."""

    array_transform: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.array_transform(out[key])
        return out


class LoadMedicalImaged(_Dict):
    """Dictionary version of :class:`LoadMedicalImage`: replaces each path by a ``MetaTensor``."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, ensure_channel_first: bool = True,
                 allow_missing_keys: bool = False, **read_options: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = LoadMedicalImage(ensure_channel_first=ensure_channel_first, **read_options)


class Windowd(_Dict):
    """Dictionary version of :class:`Window`."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, window: WindowSpec = "file",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = Window(window)


class InvertMonochrome1d(_Dict):
    """Dictionary version of :class:`InvertMonochrome1`."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, force: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = InvertMonochrome1(force)


class ToDisplayd(_Dict):
    """Dictionary version of :class:`ToDisplay`."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, window: WindowSpec = "file",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = ToDisplay(window)


class Normalized(_Dict):
    """Dictionary version of :class:`Normalize`."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, method: NormalizeMethod = "zscore",
                 allow_missing_keys: bool = False, **kwargs: float) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = Normalize(method, **kwargs)


class MedvlImageReader(ImageReader):
    """A MONAI ``ImageReader`` backed by :func:`medvl.io.read_image`.

    Use as ``monai.transforms.LoadImage(reader=MedvlImageReader())``. Arrays are in
    physical units, volumes RAS+ ``(x, y, z)``; 2D images stay ``(rows, cols)``.
    """

    def __init__(self, **read_options: Any) -> None:
        super().__init__()
        self.read_options = read_options

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        ok = (".dcm", ".dicom", ".nii", ".nii.gz", *RASTER_SUFFIXES)
        return all(Path(n).is_dir() or str(n).lower().endswith(ok) for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> list[MedicalImage] | MedicalImage:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        images = [read_image(n, **{**self.read_options, **kwargs}) for n in names]
        return images[0] if len(images) == 1 else images

    def get_data(self, img: MedicalImage | Sequence[MedicalImage]) -> tuple[np.ndarray, dict]:
        images = [img] if isinstance(img, MedicalImage) else list(img)
        meta = image_meta(images[0])
        meta["affine"] = meta["original_affine"].copy()
        meta["original_channel_dim"] = -1 if images[0].is_color else float("nan")
        arrays = [i.array for i in images]
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        if len(arrays) > 1:
            meta["original_channel_dim"] = 0
        return data, meta

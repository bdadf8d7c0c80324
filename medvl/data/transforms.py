"""Model-input transforms: a read :class:`~medvl.io.MedicalImage` -> a normalised array.

The pipeline has a deterministic part, which the preprocessing cache stores, and a
random part (augmentation), which runs after the cache on every draw:

1. **intensity** (explicit display steps): window(s) in physical units -> [0, 1]
   (the file's VOI LUT/window, a preset from ``medvl/resources/window_presets.yaml``,
   or the fixed ``hu_range``),
   then MONOCHROME1 inversion so that bright always means dense;
2. **orientation** (3D): the RAS+ ``(x, y, z)`` array becomes ``(D, H, W)`` =
   ``(z, -y, -x)``: axial slices in radiological display (anterior up, patient right
   on the image left), slices from inferior to superior;
3. **grid**: 2D keeps the aspect ratio: ``fit: pad`` fits the longest side, then
   zero-pads to ``image_size``; ``fit: crop`` (CLIP's) resizes the shortest side to the
   grid, then centre-crops; ``fit: stretch`` (SigLIP's) resizes to the grid ignoring
   the aspect ratio; ``resample`` picks bilinear/area or antialiased bicubic.
   3D is optionally resampled to ``spacing`` mm and then resized (no spacing) or
   centre-cropped / padded (with spacing) to ``image_size``;
4. **augmentation** (train split, ``augment: true``): MONAI ``RandAffine`` plus a mild
   random contrast change;
5. **normalisation** (``mean``/``std``, per output channel): last, after augmentation,
   because augmentation works on [0, 1] intensities.

Steps 1-3 are what the preprocessing cache stores (one channel per window). Step 1 is
``medvl.io.intensity``'s explicit display functions (the same ones the viewer uses);
steps 3-4 are MONAI transforms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.config import to_dict
from medvl.data.config import DataConfig
from medvl.errors import ConfigError, ImageReadError
from medvl.io.image import MedicalImage
from medvl.io.intensity import (
    apply_window,
    invert_monochrome1,
    to_display,
    window_image,
    window_presets,
)

# Bumped whenever the deterministic pipeline changes, so stale cache entries are not reused.
PIPELINE_VERSION = 3  # 3: fit (pad | crop) and resample (bilinear | bicubic)


def check_window_names(cfg: DataConfig) -> None:
    """Raise :class:`ConfigError` when ``data.window`` names an unknown preset."""
    presets = window_presets()
    for name in cfg.windows:
        if name is not None and name != "none" and name not in presets:
            raise ConfigError(
                f"unknown window preset {name!r}", field="data.window",
                expected="null, 'none' or one of " + ", ".join(sorted(presets)),
            )


def intensity_channels(image: MedicalImage, cfg: DataConfig, *, repeat: bool = True) -> np.ndarray:
    """Apply the configured window(s), then MONOCHROME1 inversion (``medvl.io`` steps).

    ``window: null`` uses the file's VOI LUT or first window (full data range when the
    file has none), a preset name its (center, width), ``"none"`` the fixed
    ``hu_range``. Colour images become BT.601 luma of their display values.

    Returns:
        float32 array ``(C, *spatial)`` in [0, 1]: ``C == cfg.in_channels``, or with
        ``repeat=False`` one channel per window (a single window is not repeated yet).
    """
    array = np.asarray(image.array)
    if not np.all(np.isfinite(array)):
        # NaN voxels (outside a NIfTI's field of view) would poison the whole batch.
        finite = array[np.isfinite(array)]
        fill = float(finite.min()) if finite.size else 0.0
        image = dataclasses.replace(image, array=np.nan_to_num(array, nan=fill, posinf=fill, neginf=fill))
    if image.is_color:
        rgb = to_display(image)[..., :3]
        channels = [rgb @ np.array([0.299, 0.587, 0.114], np.float32)]
    else:
        channels = []
        for name in cfg.windows:
            if name is None:
                channels.append(window_image(image, "file"))
            elif name == "none":
                lo, hi = cfg.hu_range
                channels.append(apply_window(image.array, (lo + hi) / 2.0 + 0.5, hi - lo + 1.0))
            else:
                channels.append(window_image(image, name))
        if image.photometric_interpretation == "MONOCHROME1":
            channels = [invert_monochrome1(ch) for ch in channels]
    if repeat and len(channels) == 1 and cfg.in_channels > 1:
        channels = channels * cfg.in_channels
    return np.stack(channels, axis=0).astype(np.float32, copy=False)


def to_display_axes_3d(volume: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """RAS+ ``(C, x, y, z)`` -> ``(C, D, H, W)`` = ``(z, -y, -x)``; spacing permuted to match."""
    out = np.transpose(volume, (0, 3, 2, 1))[:, :, ::-1, ::-1]
    sx, sy, sz = (float(s) for s in spacing[:3])
    return np.ascontiguousarray(out), (sz, sy, sx)


def _resize(array: np.ndarray, size: Sequence[int], resample: str = "bilinear") -> np.ndarray:
    from monai.transforms import Resize

    size = tuple(int(s) for s in size)
    if tuple(array.shape[1:]) == size:
        return array
    if resample == "bicubic":
        import torch
        import torch.nn.functional as F

        # torch's antialiased bicubic is PIL's filter (a = -0.5, support scaled when
        # shrinking), the resize CLIP-family processors use; clipped as PIL's uint8 output is.
        out = F.interpolate(torch.from_numpy(np.ascontiguousarray(array, np.float32))[None], size=size,
                            mode="bicubic", antialias=True, align_corners=False)[0]
        return np.clip(out.numpy(), 0.0, 1.0).astype(np.float32, copy=False)
    # area averaging when shrinking avoids aliasing of fine lines; linear when growing.
    shrinking = all(t <= s for t, s in zip(size, array.shape[1:], strict=True))
    mode = "area" if shrinking else ("bilinear" if len(size) == 2 else "trilinear")
    kw: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
    # MONAI annotates Tensor but takes NumPy arrays too (and returns the same kind).
    out = Resize(spatial_size=size, mode=mode, **kw)(array)  # type: ignore[arg-type]
    return np.asarray(out, dtype=np.float32)


def _pad_or_crop(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    from monai.transforms import ResizeWithPadOrCrop

    out = ResizeWithPadOrCrop(spatial_size=tuple(size), mode="constant")(array)  # type: ignore[arg-type]
    return np.asarray(out, dtype=np.float32)


class ModelInputTransform:
    """Deterministic preprocessing: a read image -> float32 ``(C, *image_size)``.

    Values are in [0, 1], or normalised with ``mean``/``std`` when the data section sets
    them (:meth:`normalize`, the last step).

    Args:
        cfg: the data section; ``dims``, ``image_size``, ``window``, ``in_channels``,
            ``hu_range``, ``spacing``, ``fit``, ``resample``, ``mean`` and ``std`` are used.
    """

    def __init__(self, cfg: DataConfig) -> None:
        check_window_names(cfg)
        self.cfg = cfg
        self.size = cfg.spatial_size

    def __call__(self, image: MedicalImage) -> np.ndarray:
        """Preprocess one image; raise :class:`ImageReadError` if its shape does not fit ``dims``."""
        return self.normalize(self.expand(self.core(image)))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean[c]) / std[c]`` per channel of a ``(C, ...)`` input; no-op without ``mean``/``std``."""
        if self.cfg.mean is None or self.cfg.std is None:
            return x
        shape = (-1,) + (1,) * (np.ndim(x) - 1)
        mean = np.asarray(self.cfg.mean, np.float32).reshape(shape)
        std = np.asarray(self.cfg.std, np.float32).reshape(shape)
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32, copy=False)

    def core(self, image: MedicalImage) -> np.ndarray:
        """The distinct channels on the model grid: one per window, before repetition.

        With one window and ``in_channels: 3`` this is ``(1, *image_size)``: what the
        cache stores (a third of the bytes); :meth:`expand` makes the model input.
        """
        array = np.asarray(image.array)
        spatial = array.ndim - (1 if image.is_color else 0)
        if array.ndim == 4 and array.shape[-1] == 1 and not image.is_color:
            array = array[..., 0]  # a 4D NIfTI with one time point
            image = dataclasses.replace(image, array=array)
            spatial = 3
        if spatial != self.cfg.dims:
            raise ImageReadError(
                f"image has shape {tuple(array.shape)}", path=image.path, field="dims",
                expected="a 2D (rows, cols) image for dims: 2" if self.cfg.dims == 2
                else "a 3D (x, y, z) volume for dims: 3",
            )
        x = intensity_channels(image, self.cfg, repeat=False)  # (windows, *spatial)
        if self.cfg.dims == 2:
            return self._grid_2d(x)
        return self._grid_3d(x, image.spacing)

    def expand(self, x: np.ndarray) -> np.ndarray:
        """Repeat a single channel to ``in_channels`` (no-op otherwise); float32 copy."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] == 1 and self.cfg.in_channels > 1:
            return np.repeat(x, self.cfg.in_channels, axis=0)
        return np.array(x, dtype=np.float32)

    def grid(self, x: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Apply only the spatial steps to a channel-first array on the image's grid.

        Use it to bring a mask, box raster or any per-pixel map of the *source* image
        onto the model input's grid (threshold a binary mask at 0.5 afterwards).

        Args:
            x: ``(C, rows, cols)`` for 2D or ``(C, x, y, z)`` RAS+ for 3D.
            spacing: the source voxel spacing (3D; needed when ``data.spacing`` is set).

        Returns:
            float32 ``(C, *image_size)``.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != self.cfg.dims + 1:
            raise ValueError(f"grid() expects a channel-first {self.cfg.dims}D array, got shape {x.shape}")
        return self._grid_2d(x) if self.cfg.dims == 2 else self._grid_3d(x, spacing)

    def _grid_2d(self, x: np.ndarray) -> np.ndarray:
        h, w = self.size
        rows, cols = x.shape[1], x.shape[2]
        if self.cfg.fit == "stretch":
            # SigLIP: both sides meet the grid, the aspect ratio is not kept
            return _resize(x, (h, w), self.cfg.resample)
        if self.cfg.fit == "crop":
            # CLIP: the shorter side meets the grid, the longer is cut to it around the centre
            # (long side floored as transformers' CLIPImageProcessor does).
            scale = max(h / rows, w / cols)
            fitted = (max(h, int(rows * scale)), max(w, int(cols * scale)))
        else:
            # medvl: the longer side meets the grid, the shorter is padded with zeros.
            scale = min(h / rows, w / cols)
            fitted = (max(1, min(h, round(rows * scale))), max(1, min(w, round(cols * scale))))
        return _pad_or_crop(_resize(x, fitted, self.cfg.resample), self.size)

    def _grid_3d(self, x: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
        sp_xyz = list(spacing or (1.0, 1.0, 1.0))[:3]
        sp_xyz += [1.0] * (3 - len(sp_xyz))
        x, sp = to_display_axes_3d(x, sp_xyz)  # (C, D, H, W)
        if self.cfg.spacing is None:
            return _resize(x, self.size)
        target = [
            max(1, math.floor(n * s / t + 0.5))
            for n, s, t in zip(x.shape[1:], sp, self.cfg.spacing, strict=True)
        ]
        return _pad_or_crop(_resize(x, target), self.size)


class ModelInputTransformd:
    """Dictionary wrapper of :class:`ModelInputTransform` for MONAI-style pipelines.

    Each key's value may be a :class:`MedicalImage` or a path (read with
    ``medvl.io.read_image`` and ``data.io`` options); it is replaced by the model input
    array. Other keys pass through, so it composes with ``monai.transforms.Compose``
    and MONAI dictionary transforms (``RandAffined``...) after it.

    Args:
        keys: keys to transform.
        cfg: the data section.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    def __init__(self, keys: str | Sequence[str], cfg: DataConfig, allow_missing_keys: bool = False) -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.transform = ModelInputTransform(cfg)
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from medvl.io import read_image

        out = dict(data)
        for key in self.keys:
            if key not in out:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not in the data dictionary (has {sorted(out)})")
            value = out[key]
            if not isinstance(value, MedicalImage):
                value = read_image(value, **self.transform.cfg.io.as_kwargs())
            out[key] = self.transform(value)
        return out


class Augmentation:
    """Random augmentation applied after the cache (train split only).

    A small affine (rotation up to ~6 degrees in-plane, scale +-8 %, shift up to 4 % of
    the side; MONAI ``RandAffine``) and a random gamma (``RandAdjustContrast``).
    Intensities stay in [0, 1]; borders fill with 0. A class rather than a closure so
    datasets pickle into spawned DataLoader workers.

    Args:
        cfg: the data section (``dims`` and ``image_size`` are used).
        seed: seed of the transforms' random state; the dataset reseeds per item with
            :meth:`set_random_state`.
    """

    def __init__(self, cfg: DataConfig, seed: int | None = None) -> None:
        from monai.transforms import Compose, RandAdjustContrast, RandAffine

        size = cfg.spatial_size
        rot = 0.1
        if cfg.dims == 2:
            rotate_range: Any = (rot,)
            translate = tuple(0.04 * s for s in size)
        else:
            # (D, H, W): the first angle turns the H-W (axial) plane; slices stay slices.
            rotate_range = (rot, 0.0, 0.0)
            translate = (0.0,) + tuple(0.04 * s for s in size[1:])
        self.pipeline = Compose([
            RandAffine(prob=0.8, rotate_range=rotate_range, scale_range=0.08,
                       translate_range=translate, padding_mode="zeros", mode="bilinear"),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ])
        if seed is not None:
            self.set_random_state(seed)

    def set_random_state(self, seed: int) -> None:
        """Reseed every random transform (``seed`` < 2**32)."""
        self.pipeline.set_random_state(seed=int(seed))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.pipeline(np.asarray(x, dtype=np.float32)), dtype=np.float32)
        return np.clip(out, 0.0, 1.0, out=out)


def build_augmentation(cfg: DataConfig, seed: int | None = None) -> Augmentation:
    """The train-time :class:`Augmentation` of a data section."""
    return Augmentation(cfg, seed)


def preprocess_signature(cfg: DataConfig) -> str:
    """A short hash of every config field that changes the deterministic output."""
    # mean/std are applied after the cache, so they do not change what it stores.
    keys = ("dims", "image_size", "window", "in_channels", "hu_range", "spacing", "fit", "resample",
            "cache_dtype", "io")
    data = {k: to_dict(getattr(cfg, k)) for k in keys}
    data["size"] = list(cfg.spatial_size)
    data["version"] = PIPELINE_VERSION
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

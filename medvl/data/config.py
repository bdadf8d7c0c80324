"""``DataConfig``: the ``data`` section of an experiment config.

Built with :func:`medvl.config.from_dict` (``from_dict(DataConfig, cfg["data"], where="data")``),
which rejects unknown keys and wrong types; :meth:`DataConfig.validate` then checks the
relations between fields (``image_size`` against ``dims``, ``in_channels`` against
``window``) and raises :class:`~medvl.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medvl.errors import ConfigError
from medvl.io.reader import ReadOptions

TEXT_MODES = ("truncate", "sample_sentences")


@dataclass
class DataConfig:
    """How studies become model inputs and batches.

    Attributes:
        manifest: default manifest path (a ``build_*`` call may name another).
        dims: 2 for radiographs, 3 for volumes. Rows whose ``dims`` differ are rejected.
        image_size: output grid. 2D: an int (square side; the image keeps its aspect
            ratio and is padded) or ``[H, W]``. 3D: ``[D, H, W]`` (or an int for a cube).
        window: intensity window(s). ``None`` uses the file's own VOI LUT or first
            window (DICOM Window Center/Width), else the full data range; a preset name
            (``"lung"``, ``"mediastinum"``, ``"bone"``, ``"brain"``, ``"abdomen"``...,
            see ``medvl/resources/window_presets.yaml``) applies that (center, width);
            ``"none"`` rescales the fixed range ``hu_range`` to [0, 1] (raw HU).
            A list of names stacks one channel per window.
        in_channels: channels of the model input. With one window and ``in_channels > 1``
            the channel is repeated (for encoders pretrained on RGB); with a list of
            windows it must equal the list's length.
        hu_range: (low, high) physical range mapped to [0, 1] by ``window: none``.
        spacing: target voxel spacing in mm (3D only) applied before the fixed grid;
            ``None`` resizes the whole volume to ``image_size`` directly.
        fit: how a 2D image meets the ``image_size`` grid. ``"pad"`` (medvl's) fits the
            longer side and zero-pads the shorter, so nothing is cut off; ``"crop"``
            (CLIP's) resizes the shorter side to the grid and centre-crops the longer;
            ``"stretch"`` (SigLIP's and MedSigLIP's processors) resizes both sides to the
            grid without keeping the aspect ratio.
        resample: interpolation of the 2D resize. ``"bilinear"`` (medvl's): linear
            when growing, area averaging when shrinking (no aliasing); ``"bicubic"``:
            antialiased bicubic as PIL and CLIP's image processors do it, clipped to [0, 1].
        mean: per output channel, subtracted after the [0, 1] window (``null`` = none);
            with ``std`` this is the ``Normalize`` step of CLIP-family encoders.
        std: per output channel divisor applied with ``mean`` (``null`` = none).
        batch_size: studies per batch (before skipped studies are dropped).
        num_workers: DataLoader worker processes (0 = load in the main process).
        sections: report sections used for the text, in order.
        max_words: word limit of the prepared text.
        text_mode: ``"truncate"`` keeps the first ``max_words`` words;
            ``"sample_sentences"`` samples whole sentences (new draw every epoch) up to
            ``max_words`` on the train split; val and test always truncate.
        expand_abbreviations: expand radiology abbreviations (table in ``medvl.data.reports``).
        lowercase: lower-case the prepared text (for tokenizers trained on cased text
            whose model was fitted to lower-cased reports).
        cache_dir: directory of the preprocessing cache; ``None`` disables it.
        cache_dtype: dtype stored in the cache (``float16`` halves disk and page cache).
        cache_key: identify images by ``stat`` (path + size + mtime, free) or
            ``content`` (hash of the bytes: survives copying the corpus elsewhere).
        augment: random affine / intensity augmentation on the train split only.
        drop_last: drop the last incomplete batch when shuffling (training).
        io: options of ``medvl.io.read_image`` (``max_voxels``, ``allow_nonuniform``,
            ``spacing_tolerance``, ``nonfinite``, ``recursive``).
    """

    manifest: str | None = None
    dims: int = 2
    image_size: int | list[int] = 224
    window: str | list[str] | None = None
    in_channels: int = 1
    hu_range: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    spacing: list[float] | None = None
    fit: Literal["pad", "crop", "stretch"] = "pad"
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_size: int = 16
    num_workers: int = 0
    sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    max_words: int = 128
    text_mode: Literal["truncate", "sample_sentences"] = "truncate"
    expand_abbreviations: bool = True
    lowercase: bool = False
    cache_dir: str | None = None
    cache_dtype: Literal["float16", "float32"] = "float32"
    cache_key: Literal["stat", "content"] = "stat"
    augment: bool = False
    drop_last: bool = False
    io: ReadOptions = field(default_factory=ReadOptions)

    def validate(self) -> None:
        """Check cross-field constraints; raise :class:`ConfigError` naming the key."""
        if self.dims not in (2, 3):
            raise ConfigError(f"dims is {self.dims}", field="data.dims", expected="2 or 3")
        size = self.spatial_size
        if any(s <= 0 for s in size):
            raise ConfigError(f"image_size {self.image_size} has a non-positive side",
                              field="data.image_size", expected="positive sizes")
        windows = self.windows
        if len(windows) > 1 and self.in_channels != len(windows):
            raise ConfigError(
                f"{len(windows)} windows but in_channels is {self.in_channels}",
                field="data.in_channels", expected=f"{len(windows)} (one channel per window)",
            )
        if self.in_channels < 1:
            raise ConfigError(f"in_channels is {self.in_channels}", field="data.in_channels",
                              expected=">= 1")
        if len(self.hu_range) != 2 or self.hu_range[0] >= self.hu_range[1]:
            raise ConfigError(f"hu_range {self.hu_range}", field="data.hu_range",
                              expected="[low, high] with low < high")
        if self.spacing is not None and (len(self.spacing) != 3 or self.dims != 3
                                         or any(s <= 0 for s in self.spacing)):
            raise ConfigError(f"spacing {self.spacing}", field="data.spacing",
                              expected="null, or three positive mm values with dims: 3")
        if self.dims == 3 and (self.fit != "pad" or self.resample != "bilinear"):
            key = "fit" if self.fit != "pad" else "resample"
            raise ConfigError(f"{key} is {getattr(self, key)!r} with dims: 3", field=f"data.{key}",
                              expected="the default (crop, stretch and bicubic apply to 2D images only)")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std must be given together", field="data.mean" if self.mean is None
                              else "data.std", expected="both null, or one value per channel each")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.in_channels:
                raise ConfigError(f"{key} has {len(values)} values for {self.in_channels} channel(s)",
                                  field=f"data.{key}", expected=f"{self.in_channels} (one per channel)")
        if self.std is not None and any(not v > 0 for v in self.std):
            raise ConfigError(f"std {self.std}", field="data.std", expected="positive values")
        for key in ("batch_size", "max_words"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} is {getattr(self, key)}", field=f"data.{key}",
                                  expected=">= 1")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers is {self.num_workers}", field="data.num_workers",
                              expected=">= 0")
        if not self.sections:
            raise ConfigError("no report sections", field="data.sections",
                              expected="e.g. [findings, impression]")
        # The presets live with medvl.io; imported here to avoid a module cycle.
        from medvl.data.transforms import check_window_names

        check_window_names(self)

    @property
    def spatial_size(self) -> tuple[int, ...]:
        """The output grid as a tuple: ``(H, W)`` for 2D, ``(D, H, W)`` for 3D."""
        n = self.dims
        if isinstance(self.image_size, int):
            return (self.image_size,) * n
        size = tuple(int(s) for s in self.image_size)
        if len(size) != n:
            raise ConfigError(
                f"image_size {list(size)} has {len(size)} sides for dims {n}",
                field="data.image_size",
                expected="an int or [H, W]" if n == 2 else "an int or [D, H, W]",
            )
        return size

    @property
    def windows(self) -> list[str | None]:
        """The window setting as a list (one entry per stacked channel)."""
        if isinstance(self.window, list):
            if not self.window:
                raise ConfigError("empty window list", field="data.window",
                                  expected="null, a preset name or a list of names")
            return list(self.window)
        return [self.window]

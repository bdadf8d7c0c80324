"""``preprocessing.json``: everything from file to tensor, saved with the model.

A model directory carries the deterministic part of the ``data`` section it was trained
with, so the same file gives the same input tensor in training, eval, index, viewer,
``medvl embed`` and :func:`medvl.load`::

    {"format": "medvl-preprocessing", "format_version": 1,
     "image": {"dims", "image_size", "window", "in_channels", "hu_range", "spacing",
               "fit", "resample", "mean", "std", "io", "photometric", "color"},
     "text": {"sections", "max_words", "expand_abbreviations", "lowercase"}}

The fields are the deterministic subset of :class:`~medvl.data.config.DataConfig`, so
:meth:`Preprocessing.from_data_config` and :meth:`Preprocessing.apply_to` convert both
ways. Batching, caching, augmentation and sentence sampling are training choices and
stay out. The tokenizer and its ``max_length`` stay in the model's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from medvl.atomic import write_text_atomic
from medvl.config import from_dict, to_dict
from medvl.data.config import DataConfig
from medvl.errors import CheckpointError, ConfigError
from medvl.io.reader import ReadOptions

log = logging.getLogger(__name__)

FORMAT = "medvl-preprocessing"
FORMAT_VERSION = 1
FILE_NAME = "preprocessing.json"

#: preprocessing fields, each also a ``data`` section field of the same name
IMAGE_FIELDS = ("dims", "image_size", "window", "in_channels", "hu_range", "spacing", "fit", "resample",
                "mean", "std", "io")
TEXT_FIELDS = ("sections", "max_words", "expand_abbreviations", "lowercase")


@dataclass
class ImagePreprocessing:
    """File -> model input tensor (see :class:`~medvl.data.config.DataConfig` for each field).

    Attributes:
        photometric: how MONOCHROME1 is handled; format 1 always inverts it so that
            bright means dense (recorded so a reader can tell, and a later format can change it).
        color: how colour images become one channel; format 1 takes BT.601 luma.
    """

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
    io: ReadOptions = field(default_factory=ReadOptions)
    photometric: Literal["monochrome1_inverted"] = "monochrome1_inverted"
    color: Literal["bt601_luma"] = "bt601_luma"


@dataclass
class TextPreprocessing:
    """Report or query -> the text the tokenizer sees."""

    sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    max_words: int = 128
    expand_abbreviations: bool = True
    lowercase: bool = False


def _same(name: str, a: Any, b: Any, dims: int) -> bool:
    """Equal as preprocessing (``128`` and ``[128, 128]`` are the same 2D grid)."""
    if name == "image_size":
        def grid(v: Any) -> list[int]:
            return [int(v)] * dims if isinstance(v, int) else [int(s) for s in v]
        return grid(a) == grid(b)
    if name == "window" and isinstance(a, list) != isinstance(b, list):
        a = a if isinstance(a, list) else [a]
        b = b if isinstance(b, list) else [b]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same("", x, y, dims) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass
class Preprocessing:
    """The preprocessing a model was trained with (``preprocessing.json``).

    Attributes:
        image: file -> tensor settings.
        text: report -> text settings.
    """

    image: ImagePreprocessing = field(default_factory=ImagePreprocessing)
    text: TextPreprocessing = field(default_factory=TextPreprocessing)

    # -- conversion ----------------------------------------------------------------
    @classmethod
    def from_data_config(cls, data_cfg: DataConfig | Mapping[str, Any] | None) -> Preprocessing:
        """The preprocessing part of a ``data`` section (a :class:`DataConfig` or a mapping)."""
        cfg = _as_data_config(data_cfg)
        image = ImagePreprocessing(**{k: _copy(getattr(cfg, k)) for k in IMAGE_FIELDS})
        text = TextPreprocessing(**{k: _copy(getattr(cfg, k)) for k in TEXT_FIELDS})
        return cls(image=image, text=text)

    def data_config(self) -> DataConfig:
        """A :class:`DataConfig` with these settings and defaults for everything else."""
        return self.apply_to(None)

    def conflicts(self, data_section: DataConfig | Mapping[str, Any] | None) -> list[tuple[str, Any, Any]]:
        """Explicit settings of ``data_section`` that contradict this preprocessing.

        A mapping's keys are what the user set; of a :class:`DataConfig`, the fields that
        differ from the defaults count as set.

        Returns:
            ``[(dotted field, saved value, given value)]``, empty when they agree.
        """
        saved = self._values()
        given = _explicit(data_section, saved)
        dims = int(saved["dims"])
        out: list[tuple[str, Any, Any]] = []
        for name, value in given.items():
            if name not in saved:
                continue
            if name == "io":
                sub = dict(value or {})
                for key, v in sub.items():
                    if key in saved["io"] and not _same(key, saved["io"][key], v, dims):
                        out.append((f"data.io.{key}", saved["io"][key], v))
            elif not _same(name, saved[name], value, dims):
                out.append((f"data.{name}", saved[name], value))
        return out

    def apply_to(self, data_section: DataConfig | Mapping[str, Any] | None, *, override: bool = False,
                 source: str = FILE_NAME) -> DataConfig:
        """``data_section`` with this preprocessing filled in (batching, cache, manifest kept).

        Args:
            data_section: the user's ``data`` section (``None``: defaults).
            override: keep the user's explicit settings where they contradict this
                preprocessing (each is logged as a warning); otherwise such a setting
                is a :class:`ConfigError`.
            source: where this preprocessing came from, for messages.

        Raises:
            ConfigError: an explicit setting contradicts the saved preprocessing (names
                the field), and ``override`` is False.
        """
        clashes = self.conflicts(data_section)
        if clashes and not override:
            name, saved, given = clashes[0]
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise ConfigError(
                f"{name} is {given!r} but the model was trained with {saved!r} ({source}){more}",
                field=name, expected=f"{saved!r}, no setting (the model's own is used), or an explicit "
                "override (--override-preprocessing)",
            )
        own = to_dict(data_section) if isinstance(data_section, DataConfig) else dict(data_section or {})
        merged = {**own, **self._values()}
        for name, saved, given in clashes:
            log.warning("overriding the model's preprocessing: %s %r -> %r", name, saved, given)
            keys = name.split(".")[1:]
            if keys[0] == "io":
                merged["io"] = {**merged["io"], keys[1]: given}
            else:
                merged[keys[0]] = given
        return from_dict(DataConfig, merged, where="data")

    def _values(self) -> dict[str, Any]:
        img = to_dict(self.image)
        txt = to_dict(self.text)
        return {**{k: img[k] for k in IMAGE_FIELDS}, **{k: txt[k] for k in TEXT_FIELDS}}

    def transform(self) -> Any:
        """The data room's :class:`~medvl.data.transforms.ModelInputTransform` for this preprocessing."""
        from medvl.data.transforms import ModelInputTransform

        return ModelInputTransform(self.data_config())

    # -- the file ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``preprocessing.json`` document."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "image": to_dict(self.image),
                "text": to_dict(self.text)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, path: str | PathLike[str] | None = None) -> Preprocessing:
        """Parse a ``preprocessing.json`` document.

        Raises:
            CheckpointError: another format, a newer version, or invalid fields (named).
        """
        where = str(path) if path is not None else FILE_NAME
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CheckpointError("not a medvl preprocessing file", path=path, field="format", expected=FORMAT)
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise CheckpointError(f"format_version {version!r}", path=path, field="format_version",
                                  expected=f"1..{FORMAT_VERSION} (a newer medvl wrote this file?)")
        try:
            image = from_dict(ImagePreprocessing, data.get("image"), where="image")
            text = from_dict(TextPreprocessing, data.get("text"), where="text")
            out = cls(image=image, text=text)
            out.data_config()  # cross-field checks (window presets, mean/std per channel...)
        except ConfigError as exc:
            name = exc.field or ""
            if name.startswith("data."):  # the cross-field checks name the data section's key
                key = name.split(".")[1]
                name = ("text." if key in TEXT_FIELDS else "image.") + name[len("data."):]
            raise CheckpointError(exc.message, path=where, field=name, expected=exc.expected) from None
        return out

    def save(self, directory: str | PathLike[str]) -> Path:
        """Write ``preprocessing.json`` into ``directory`` atomically; returns the file."""
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | PathLike[str]) -> Preprocessing:
        """Read a model directory's ``preprocessing.json``.

        Raises:
            CheckpointError: the file is missing (a model saved before medvl recorded its
                preprocessing: the message says how to add it), unreadable or invalid.
        """
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise CheckpointError(
                "the model directory has no preprocessing.json (saved before medvl kept the preprocessing "
                "with the model), so it cannot be used safely", path=directory, field=FILE_NAME,
                expected=f"the file: write it from the run's config with `medvl model preprocessing {directory} "
                "--config RUN/config.yaml` (its data section is what the model was trained with)",
            )
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"unreadable preprocessing file: {exc}", path=path) from None
        return cls.from_json(data, path=path)


def _copy(value: Any) -> Any:
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) \
        else (list(value) if isinstance(value, list) else value)


def _as_data_config(data_section: DataConfig | Mapping[str, Any] | None) -> DataConfig:
    if isinstance(data_section, DataConfig):
        data_section.validate()
        return data_section
    return from_dict(DataConfig, dict(data_section or {}), where="data")


def _explicit(data_section: DataConfig | Mapping[str, Any] | None, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a user made: a mapping's keys, or a DataConfig's non-default fields.

    A mapping is read together with the saved values (so ``mean`` alone is checked
    against the saved ``std``) and normalised through :class:`DataConfig`, so types
    compare as the saved ones (ints -> floats...).
    """
    if data_section is None:
        return {}
    if isinstance(data_section, DataConfig):
        default = to_dict(DataConfig())
        own = to_dict(data_section)
        out = {k: v for k, v in own.items() if k != "io" and v != default[k]}
        io = {k: v for k, v in own["io"].items() if v != default["io"][k]}
        if io:
            out["io"] = io
        return out
    given = dict(data_section)
    merged = {**saved, **given}
    if "io" in given:
        merged["io"] = {**dict(saved.get("io") or {}), **dict(given["io"] or {})}
    cfg = to_dict(from_dict(DataConfig, merged, where="data"))
    out = {k: cfg[k] for k in given if k in cfg and k != "io"}
    if "io" in given:
        out["io"] = {k: cfg["io"][k] for k in dict(given["io"] or {})}
    return out


def write_from_config(model_dir: str | PathLike[str], config_path: str | PathLike[str], *,
                      force: bool = False) -> Path:
    """Write ``preprocessing.json`` for a model saved before it existed, from its run's config.

    Args:
        model_dir: the model directory.
        config_path: the experiment config the model was trained with (``medvl train``
            writes it as ``config.yaml`` next to ``model/``); its ``data`` section is used.
        force: replace an existing file.

    Raises:
        CheckpointError: the file exists (without ``force``) or the directory is not a model.
        ConfigError: the config is missing or its data section is invalid.
    """
    from medvl.config import load_config
    from medvl.models.saving import read_config

    read_config(model_dir)  # a medvl model directory
    target = Path(model_dir) / FILE_NAME
    if target.exists() and not force:
        raise CheckpointError("preprocessing.json already exists", path=target, field=FILE_NAME,
                              expected="--force to replace it")
    cfg = load_config(config_path)
    return Preprocessing.from_data_config(cfg.get("data") or {}).save(model_dir)

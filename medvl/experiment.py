"""The top-level experiment schema: which sections a config may have, each typed.

An experiment config (YAML) has one section per room plus two scalars::

    seed: 0              # the run's one seed (training order, initial weights, augmentation)
    output_dir: runs/x   # optional default for --out
    data: {...}          # medvl.data.config.DataConfig
    model: {...}         # medvl.models.config.ModelConfig
    loss: {...}          # medvl.losses.combine.LossConfig
    train: {...}         # medvl.train.config.TrainConfig
    eval: {...}          # medvl.eval.config.EvalConfig
    index: {...}         # medvl.index.config.IndexConfig
    demo: {...}          # medvl.demo.DemoConfig (``medvl demo`` only)

(``base: other.yaml`` is resolved by :func:`medvl.config.load_config` before this.)
:func:`parse_experiment` rejects an unknown or misspelled top-level key with a
did-you-mean, and builds every section into its own dataclass, so a command fails with
exit 2 before any work. The section classes live in their rooms and are imported by
name from the table :data:`SECTIONS` (this module sits below them all).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvl.config import from_dict, to_dict
from medvl.errors import ConfigError

if TYPE_CHECKING:
    from medvl.data.config import DataConfig
    from medvl.demo import DemoConfig
    from medvl.eval.config import EvalConfig
    from medvl.index.config import IndexConfig
    from medvl.losses.combine import LossConfig
    from medvl.models.config import ModelConfig
    from medvl.train.config import TrainConfig

#: section name -> "module:Class" of its config dataclass
SECTIONS: dict[str, str] = {
    "data": "medvl.data.config:DataConfig",
    "model": "medvl.models.config:ModelConfig",
    "loss": "medvl.losses.combine:LossConfig",
    "train": "medvl.train.config:TrainConfig",
    "eval": "medvl.eval.config:EvalConfig",
    "index": "medvl.index.config:IndexConfig",
    "demo": "medvl.demo:DemoConfig",
}
#: top-level scalars
SCALARS = ("seed", "output_dir")


def section_class(name: str) -> type:
    """The config dataclass of section ``name``."""
    module, _, cls = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def check_top_level(config: Mapping[str, Any], *, source: str | None = None) -> None:
    """Raise :class:`ConfigError` for an unknown top-level key, suggesting the nearest valid one."""
    allowed = [*SECTIONS, *SCALARS]
    for key in config:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown top-level section {key!r}{hint}", path=source, field=str(key),
                          expected="one of " + ", ".join(allowed))
    for name in SECTIONS:
        value = config.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"section {name!r} is {type(value).__name__}", path=source, field=name,
                              expected="a mapping of settings")
    train = config.get("train")
    if isinstance(train, Mapping) and "seed" in train:
        raise ConfigError("train.seed is gone: a run has one seed", path=source, field="train.seed",
                          expected="the top-level 'seed: N'")


def check_overrides(overrides: Iterable[str], *, raw_sections: Iterable[str] = ()) -> None:
    """Check the keys of command-line overrides (``train.epochs=3``) before they meet a config file.

    A misspelt section or key in an override is then reported as the override's, with a
    suggestion, rather than as the config file's (which does not hold it).

    Sections named in ``raw_sections`` (kept as plain mappings, see :func:`parse_experiment`)
    are not checked inside.

    Raises:
        ConfigError: an override that is not ``key=value``, an unknown top-level section,
            ``train.seed``, or an unknown key of a section.
    """
    from medvl.config import apply_overrides, check_keys

    raw = set(raw_sections)
    for item in overrides:
        given = apply_overrides({}, [item])  # also refuses an item that is not key=value
        try:
            check_top_level(given)
            for top, section in given.items():
                if top in SECTIONS and top not in raw and isinstance(section, Mapping):
                    check_keys(section_class(top), section, where=top)
        except ConfigError as exc:
            exc.message = f"in the command-line override {item!r}: {exc.message}"
            exc.args = (str(exc),)
            raise


@dataclass
class Experiment:
    """A validated experiment config, one typed section per room.

    Attributes:
        seed: the run's seed.
        output_dir: default run directory (``None``: ``runs/<config name>``).
        data, model, loss, train, eval, index, demo: the sections (defaults when absent);
            a section named in ``raw_sections`` of :func:`parse_experiment` stays a plain
            mapping (for builders that are not medvl's, as the engine's test fakes).
        raw: the config as given (run records and checkpoint fingerprints use it).
    """

    seed: int = 0
    output_dir: str | None = None
    data: DataConfig = None  # type: ignore[assignment]
    model: ModelConfig = None  # type: ignore[assignment]
    loss: LossConfig = None  # type: ignore[assignment]
    train: TrainConfig = None  # type: ignore[assignment]
    eval: EvalConfig = None  # type: ignore[assignment]
    index: IndexConfig = None  # type: ignore[assignment]
    demo: DemoConfig = None  # type: ignore[assignment]
    raw: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """Every section with its defaults filled in (what ``config.yaml`` of a run records)."""
        out: dict[str, Any] = {"seed": self.seed}
        if self.output_dir is not None:
            out["output_dir"] = self.output_dir
        for name in SECTIONS:
            if name == "demo" and "demo" not in self.raw:
                continue
            out[name] = to_dict(getattr(self, name))
        return out


def parse_experiment(config: Mapping[str, Any] | Experiment, *, source: str | None = None,
                     raw_sections: Iterable[str] = ()) -> Experiment:
    """Validate a whole experiment config into an :class:`Experiment`.

    Args:
        config: the mapping from :func:`medvl.config.load_config` (or an Experiment, returned as is).
        source: the config file, for messages.
        raw_sections: sections kept as plain mappings (not medvl's components).

    Raises:
        ConfigError: an unknown top-level key (with a suggestion), ``train.seed``, or an
            invalid section (the dotted key is named).
    """
    if isinstance(config, Experiment):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"the config is a {type(config).__name__}", path=source,
                          expected="a mapping of sections")
    check_top_level(config, source=source)
    raw = dict(config)
    seed = config.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed is {seed!r}", path=source, field="seed", expected="an integer >= 0")
    output_dir = config.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        raise ConfigError(f"output_dir is {output_dir!r}", path=source, field="output_dir", expected="a path")
    keep_raw = set(raw_sections)
    sections: dict[str, Any] = {}
    for name in SECTIONS:
        value = config.get(name)
        if name in keep_raw:
            sections[name] = dict(value or {})
            continue
        try:
            sections[name] = from_dict(section_class(name), value, where=name)
        except ConfigError as exc:
            if source and not exc.path:
                exc.path = source
                exc.args = (str(exc),)
            raise
    return Experiment(seed=int(seed), output_dir=output_dir, raw=raw, **sections)

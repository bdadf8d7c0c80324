"""Experiment configs: YAML files with dotted command-line overrides.

An experiment config is a nested mapping with one section per room (``data``,
``model``, ``loss``, ``train``, ``eval``, ``index``). Each component turns its own
section into its own small dataclass with :func:`from_dict`, which rejects unknown
keys and wrong types with a :class:`~medvl.errors.ConfigError` naming the dotted key.

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.epochs=3", "model.text.name=minilm"])
    >>> train_cfg = from_dict(TrainConfig, cfg["train"], where="train")
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from medvl.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``3`` -> int, ``true`` -> bool, ``[1,2]`` -> list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _maybe_float(value)


def _maybe_float(value: Any) -> Any:
    """PyYAML follows YAML 1.1, where ``1e-4`` is a string; treat it as the number users mean."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set ``cfg["a"]["b"]["c"] = value`` for ``key == "a.b.c"``, creating sections as needed."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section",
                field=key,
            )
        node = child
    node[parts[-1]] = value


def get_dotted(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Return ``cfg["a"]["b"]`` for ``key == "a.b"`` or ``default`` when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied.

    Raises:
        ConfigError: an override is not of the form ``dotted.key=value``.
    """
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"override '{item}' is not of the form key=value", field=item,
                expected="e.g. train.epochs=3",
            )
        key, _, raw = item.partition("=")
        set_dotted(out, key.strip(), parse_value(raw))
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found", path=p)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=p) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of sections", path=p)
    return data


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load an experiment config and apply dotted overrides.

    A config may name a base with ``base: other.yaml`` (resolved relative to the file);
    the base is loaded first and this file's keys are merged over it.
    """
    p = Path(path)
    data = load_yaml(p)
    base = data.pop("base", None)
    if base is not None:
        data = merge(load_config(p.parent / base), data)
    return apply_overrides(data, overrides)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; coerce int->float and str->Enum."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"value {value!r} does not fit", field=where, expected=_type_name(tp))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"unknown choice {value!r}", field=where,
                expected="one of " + ", ".join(repr(c) for c in choices),
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"value {value!r} is not a list", field=where, expected=_type_name(tp))
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"value {value!r} is not a mapping", field=where)
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(
                f"unknown choice {value!r}", field=where,
                expected="one of " + ", ".join(repr(m.value) for m in tp),
            ) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"value {value!r} is not a section", field=where)
        return from_dict(tp, value, where=where)
    if tp is float:
        value = _maybe_float(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"value {value!r} is not true/false", field=where)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"value {value!r} is not a number", field=where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"value {value!r} has the wrong type", field=where, expected=_type_name(tp))
    return value


def check_keys(cls: type, keys: Iterable[str], *, where: str = "") -> None:
    """Reject keys that are not fields of dataclass ``cls``, suggesting the nearest one.

    Raises:
        ConfigError: an unknown key (``where`` is the dotted path of the section).
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(keys) - names)
    if unknown:
        import difflib

        prefix = f"{where}." if where else ""
        close = difflib.get_close_matches(str(unknown[0]), sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} " + ", ".join(prefix + u for u in unknown) + hint,
            field=prefix + unknown[0],
            expected="one of " + ", ".join(sorted(names)),
        )


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a config section, rejecting unknown keys.

    Args:
        cls: a dataclass type; its field annotations drive validation.
        data: the section (``None`` means all defaults).
        where: the dotted path of the section, used in error messages.

    Raises:
        ConfigError: unknown key, missing required key, or a value of the wrong type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    check_keys(cls, data, where=where)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("required key is missing", field=key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Turn a (nested) config dataclass back into plain YAML/JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj

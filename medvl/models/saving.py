"""The one model format: ``config.json``, ``model.safetensors``, tokenizer files, ``README.md``.

A directory written by :func:`save_model` is self-describing: ``config.json`` holds
the model section and the text tower's architecture, so :func:`load_model` rebuilds
the model with no network, no original weight files and no code edits, then loads
the safetensors state dict strictly (no key renaming).
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from datetime import datetime, timezone
from importlib import metadata, resources
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.atomic import atomic_path, recover_dir, write_text_atomic
from medvl.config import from_dict
from medvl.errors import CheckpointError, ConfigError, MedvlError
from medvl.models.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from medvl.models.model import MedVLModel

FORMAT = "medvl-dual-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PROVENANCE_NAME = "provenance.json"


def _version() -> str:
    try:
        return metadata.version("medvl")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_model(
    model: MedVLModel, directory: str | PathLike[str], *, card: dict[str, Any] | None = None,
    preprocessing: Any = None, training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (each file atomically; other files are kept).

    Args:
        model: the model to save.
        directory: target folder, created if needed.
        card: extra fields for the model card template (``training_data``,
            ``metrics``, ``intended_use``, ...); unknown fields are listed at the end.
        preprocessing: a ``medvl.inference.Preprocessing`` (anything with
            ``save(directory)``) written as ``preprocessing.json``; without it the
            directory cannot be loaded by ``medvl.load`` until one is added.
        training: how the model was trained, stored as ``config.json``'s top-level
            ``"training"`` (``loss_terms``, ``local_heads_trained``: heatmaps read it).

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    section = model.config
    # where the weights started is provenance, not architecture (and may be a server path)
    section["init_from"] = None
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medvl_version": _version(),
        "model": section,
        "text_hf_config": model.text_encoder.hf_config(),
        "image_hf_config": _image_arch(model),
    }
    if training is not None:
        config["training"] = training
    zeroshot = getattr(model, "zeroshot", None)
    if zeroshot:
        config["zeroshot"] = zeroshot
    write_text_atomic(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    provenance = getattr(model, "provenance", None)
    if provenance:
        write_text_atomic(out / PROVENANCE_NAME,
                          json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    # clone: safetensors refuses tensors that share storage (tied or viewed weights)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "medvl_format": FORMAT})
    with tempfile.TemporaryDirectory(dir=out) as tmpdir:
        model.text_encoder.tokenizer.save_pretrained(tmpdir)
        for f in sorted(Path(tmpdir).iterdir()):
            if f.name == CONFIG_NAME:  # never let a tokenizer overwrite the model config
                continue
            with atomic_path(out / f.name) as tmp:
                shutil.copyfile(f, tmp)
    write_text_atomic(out / CARD_NAME, render_card(model, card or {}))
    if preprocessing is not None:
        preprocessing.save(out)
    return out


def _image_arch(model: MedVLModel) -> dict[str, Any] | None:
    enc = getattr(model.image_encoder, "encoder2d", model.image_encoder)
    arch = getattr(enc, "hf_config", None)
    return arch() if callable(arch) else None


def render_card(model: MedVLModel, fields: dict[str, Any]) -> str:
    """Fill ``medvl/resources/model_card.md`` for ``model``.

    The template uses ``$name`` placeholders (:class:`string.Template`); fields the
    caller does not give read "not recorded".
    """
    template = resources.files("medvl.resources").joinpath("model_card.md").read_text("utf-8")
    cfg = model.cfg
    n_image = sum(p.numel() for p in model.image_encoder.parameters())
    n_text = sum(p.numel() for p in model.text_encoder.parameters())
    values: dict[str, Any] = {
        "title": "medvl dual encoder",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "medvl_version": _version(),
        "image_encoder": cfg.image.name,
        "image_volume": cfg.image.volume,
        "in_channels": cfg.image.in_channels,
        "image_size": cfg.image.image_size,
        "image_params": f"{n_image / 1e6:.2f}M",
        "text_encoder": cfg.text.name + (f" ({cfg.text.path})" if cfg.text.path else ""),
        "text_params": f"{n_text / 1e6:.2f}M",
        "text_pooling": cfg.text.pooling,
        "max_length": cfg.text.max_length,
        "embed_dim": cfg.embed_dim,
        "temperature": f"{1.0 / float(model.logit_scale.detach().exp()):.4f}",
        "training_data": "not recorded",
        "metrics": "not recorded",
        "intended_use": "research on image-report alignment; not a medical device",
        "limitations": "not recorded",
    }
    extra = {k: v for k, v in fields.items() if k not in values}
    values.update({k: v for k, v in fields.items() if k in values})
    text = string.Template(template).safe_substitute({k: str(v) for k, v in values.items()})
    if extra:
        text += "\n## Other details\n\n" + "".join(f"- **{k}**: {v}\n" for k, v in extra.items())
    return text


def read_config(directory: str | PathLike[str]) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory.

    Raises:
        CheckpointError: missing or unreadable file, or another format.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        recover_dir(directory)  # a save killed while replacing the folder: put the complete version back
    if not path.is_file():
        raise CheckpointError(
            "not a medvl model directory: config.json is missing", path=directory,
            expected="a folder written by MedVLModel.save_pretrained",
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable config: {exc}", path=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            "config.json is not a medvl model config", path=path, field="format",
            expected=FORMAT,
        )
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"written by a newer medvl (format {data['format_version']})", path=path,
            field="format_version", expected=f"<= {FORMAT_VERSION}",
        )
    return data


def load_model(
    cls: type[MedVLModel], directory: str | PathLike[str], *, map_location: Any = "cpu"
) -> MedVLModel:
    """Rebuild a model from ``directory`` and load its weights strictly.

    Raises:
        CheckpointError: missing files, an invalid config, or weights whose keys or
            shapes do not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    data = read_config(directory)
    try:
        cfg = from_dict(ModelConfig, data.get("model"), where="config.json:model")
    except ConfigError as exc:
        raise CheckpointError(exc.message, path=directory / CONFIG_NAME, field=exc.field,
                              expected=exc.expected) from None
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError("model.safetensors is missing", path=directory)
    saved_text = {"hf_config": data.get("text_hf_config") or {}, "tokenizer_dir": directory}
    try:
        model = cls(cfg, load_pretrained=False, saved_text=saved_text,
                    saved_image=data.get("image_hf_config"))
    except MedvlError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. transformers refusing a recorded architecture
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"cannot rebuild the model from config.json: {type(exc).__name__}: "
                              f"{lines[0] if lines else ''}", path=directory / CONFIG_NAME) from None
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"unreadable weights: {exc}", path=weights) from None
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            "weights do not match config.json: " + mismatch, path=weights,
            expected="weights saved together with this config",
        )
    model.load_state_dict(state, strict=True)
    model.zeroshot = data.get("zeroshot") or None
    model.provenance = read_provenance(directory)
    model.to(map_location)
    model.eval()
    return model


def read_provenance(directory: str | PathLike[str]) -> dict[str, Any] | None:
    """``provenance.json`` of a model directory (None when absent: trained here).

    Raises:
        CheckpointError: the file exists but is not a JSON object.
    """
    path = Path(directory) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable provenance: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise CheckpointError("provenance.json is not a JSON object", path=path)
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def start_from_directory(cls: type[MedVLModel], section: dict[str, Any]) -> MedVLModel:
    """Build the model of ``section`` starting from the directory ``section["init_from"]``.

    The directory's saved model section is the base; the keys given in ``section``
    override it (tower training options such as ``image.freeze`` or
    ``text.lora_rank``); its weights are loaded strictly before freezing and LoRA
    apply. The zero-shot rule and provenance travel with the weights.

    Raises:
        ConfigError: an override that is not a valid model section.
        CheckpointError: the directory is not a medvl model, or its weights do not fit
            the overridden architecture.
    """
    directory = Path(section["init_from"])
    data = read_config(directory)
    merged = _deep_merge(data.get("model") or {}, section)
    cfg = from_dict(ModelConfig, merged, where="model")
    state = _read_weights(directory)
    saved_text = {"hf_config": data.get("text_hf_config") or {}, "tokenizer_dir": directory}
    model = cls(cfg, load_pretrained=False, saved_text=saved_text,
                saved_image=data.get("image_hf_config"), init_state=state)
    model.zeroshot = data.get("zeroshot") or None
    provenance = read_provenance(directory)
    if provenance:
        provenance = dict(provenance)
        provenance["conversion"] = (str(provenance.get("conversion") or "").rstrip(". ")
                                    + "; then fine-tuned with medvl").lstrip("; ")
    model.provenance = provenance
    return model


def _read_weights(directory: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError("model.safetensors is missing", path=directory)
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"unreadable weights: {exc}", path=weights) from None


__all__ = ["load_model", "read_config", "read_provenance", "render_card", "save_model", "start_from_directory"]


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """Describe how ``state`` fails to fit a module's ``own`` state dict ("" when it fits)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    parts = [
        f"{len(keys)} {name} (e.g. {keys[0]})"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    return ", ".join(parts)

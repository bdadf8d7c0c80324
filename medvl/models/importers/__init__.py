"""Importers: pretrained models of the field as medvl model directories, offline.

One module per source format; :data:`FORMATS` is the explicit table of them.
:func:`import_model` detects the format (or takes it), converts the weights, and
writes a model directory that ``medvl.load``, ``medvl eval``, ``medvl index``,
``medvl embed``, the viewer and ``medvl train`` (``model.init_from``) use unchanged,
with the source's preprocessing, its zero-shot rule and a ``provenance.json``.

Example::

    from medvl.models.importers import import_model
    import_model("BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "models/biomedclip",
                 licence="MIT")
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from medvl.models.importers.base import Imported


@dataclass(frozen=True)
class Format:
    """One importable format.

    Attributes:
        module: module of the importer function.
        function: ``function(src, *, workdir, **options) -> Imported``.
        summary: what it reads.
        kwargs: fixed arguments (which family a shared importer reads).
    """

    module: str
    function: str
    summary: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.function)


_PKG = "medvl.models.importers"
FORMATS: dict[str, Format] = {
    "hf-clip": Format(f"{_PKG}.hf_clip", "import_hf_clip", "Hugging Face CLIPModel directory",
                      {"kind": "clip"}),
    "hf-siglip": Format(f"{_PKG}.hf_clip", "import_hf_clip",
                        "Hugging Face SiglipModel directory (MedSigLIP)", {"kind": "siglip"}),
    "dinov2-bert": Format(f"{_PKG}.dinov2_bert", "import_dinov2_bert",
                          "Dinov2Model directory (RAD-DINO) + a BERT-family text directory (--text)"),
    "open-clip": Format(f"{_PKG}.open_clip", "import_open_clip",
                        "open_clip checkpoint, timm ViT + Hugging Face text tower (BiomedCLIP)"),
    "openai-clip": Format(f"{_PKG}.openai_clip", "import_openai_clip",
                          "OpenAI CLIP ViT state dict (CheXzero)"),
    "medclip": Format(f"{_PKG}.medclip", "import_medclip", "MedCLIP checkpoint (Swin image tower)"),
}


def resolve_source(src: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """A local path, or a hub name (``google/medsiglip-448``) resolved to its downloaded copy.

    A hub name is fetched with ``huggingface_hub.snapshot_download`` for users with a
    network; with ``HF_HUB_OFFLINE=1`` only an existing local cache is used.

    Returns:
        ``(path, hub_name)``; ``hub_name`` is None for a local path.

    Raises:
        CheckpointError: neither a local path nor an available hub repository.
    """
    import re

    path = Path(src)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)):
        return path, None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src))), str(src)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: all mean "not available"
        raise CheckpointError(
            f"not a local path, and the hub repository is not available: {type(exc).__name__}", path=src,
            expected="a local directory or file, or a hub name reachable from here "
            "(with HF_HUB_OFFLINE=1 only the local cache is used)",
        ) from None


def detect_format(src: str | os.PathLike[str]) -> str:
    """The format of ``src`` from its files, its config or its weight names.

    Raises:
        CheckpointError: nothing recognisable.
    """
    path = Path(src)
    if not path.exists():
        raise CheckpointError("not found", path=path, expected="a model directory or weights file")
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return "open-clip"
        if (path / "config.json").is_file():
            from medvl.models.importers.base import read_json

            model_type = read_json(path / "config.json", what="model config").get("model_type")
            found = {"clip": "hf-clip", "siglip": "hf-siglip", "dinov2": "dinov2-bert"}.get(str(model_type))
            if found:
                return found
            raise CheckpointError(f"model_type {model_type!r} is not an importable format",
                                  path=path / "config.json", field="model_type",
                                  expected="clip, siglip or dinov2 (or --format)")
        weights = next((path / n for n in ("pytorch_model.bin", "model.safetensors") if (path / n).is_file()),
                       None)
        if weights is None:
            raise CheckpointError("no config.json, open_clip_config.json or weights file", path=path,
                                  expected="a model directory of a supported format (see --format)")
        path = weights
    keys = _weight_names(path)
    if "visual.conv1.weight" in keys and "token_embedding.weight" in keys:
        return "openai-clip"
    if any(k.startswith("vision_model.model.") for k in keys) and any(
            k.startswith("text_model.projection_head.") for k in keys):
        return "medclip"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open-clip"
    raise CheckpointError("the weight names match no supported format", path=path,
                          expected="one of " + ", ".join(FORMATS) + " (or give --format)")


def _weight_names(path: Path) -> set[str]:
    """Parameter names of a weights file, read without loading every tensor where possible."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    import torch

    try:  # mmap: the names come without reading the tensors into memory
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - old (non-zip) pickles cannot be mapped; load_state reports errors
        from medvl.models.importers.base import load_state

        return set(load_state(path))
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    return {str(k).removeprefix("module.") for k in raw} if isinstance(raw, Mapping) else set()


def convert(src: str | os.PathLike[str], *, format: str | None = None, workdir: Path,
            **options: Any) -> tuple[str, Imported]:
    """Convert ``src`` (format detected unless given); returns the format and the result.

    Args:
        src: directory or weights file.
        format: a key of :data:`FORMATS`.
        workdir: scratch directory that outlives the conversion until the model is saved.
        **options: importer options (``tokenizer``, ``text``, ``config``, ``text_config``,
            ``variant``, ``embed_dim``); ``None`` values are ignored.

    Raises:
        ConfigError: unknown format, or an option the format does not take.
        CheckpointError: the source cannot be converted.
    """
    fmt = format or detect_format(src)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", field="--format", expected="one of " + ", ".join(FORMATS))
    row = FORMATS[fmt]
    func = row.resolve()
    given = {k: v for k, v in options.items() if v is not None}
    accepted = set(inspect.signature(func).parameters) - {"src", "workdir", *row.kwargs}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ConfigError(f"format {fmt} takes no option {unknown[0]!r}", field=f"--{unknown[0].replace('_', '-')}",
                          expected="one of " + ", ".join(sorted(accepted)) if accepted else "no options")
    return fmt, func(Path(src), workdir=workdir, **row.kwargs, **given)


def import_model(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    licence: str | None = None,
    name: str | None = None,
    hub_name: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Import ``src`` as a medvl model directory at ``out``.

    Args:
        src: the source model: a directory or weights file, or a hub name for users
            with a network (see :func:`resolve_source`).
        out: the model directory to write (must not exist unless ``overwrite``).
        format: a key of :data:`FORMATS`; detected when omitted.
        licence: the licence or terms of use the user states (recorded, shown by the viewer).
        name: a display name (default: the source's).
        hub_name: the source's hub name, for users with a network.
        overwrite: replace an existing ``out``.
        **options: format options, see :func:`convert`.

    Returns:
        The written directory.
    """
    from medvl.models.importers.write import write_imported

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError("the output directory exists and is not empty", path=out,
                              field="--out", expected="a new directory (or --overwrite)")
    local, hub = resolve_source(src)
    with tempfile.TemporaryDirectory() as work:
        fmt, imported = convert(local, format=format, workdir=Path(work), **options)
        hub_name = hub_name or hub
        out.parent.mkdir(parents=True, exist_ok=True)
        # written beside the target, then renamed: a failed import leaves no half directory
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            write_imported(imported, staging, fmt=fmt, licence=licence, name=name, hub_name=hub_name)
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return out


__all__ = ["FORMATS", "Format", "convert", "detect_format", "import_model", "resolve_source"]

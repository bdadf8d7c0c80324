"""What every importer shares: reading foreign weights safely, loading them through
transformers, and the result an importer hands back.

Foreign checkpoints are PyTorch pickles or safetensors. Pickles are read with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler that rebuilds only
tensors and plain containers, so no code in the file runs. Weights that belong to a
transformers architecture are written, in the layout that architecture's published
checkpoints use, to a temporary directory and loaded with the class's own
``from_pretrained``: transformers then applies its own key conversions (its layouts
change between versions) and medvl checks that every weight was found.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medvl.errors import CheckpointError

if TYPE_CHECKING:
    from medvl.models.model import MedVLModel


@dataclass
class Imported:
    """An imported model, ready to be written as a medvl model directory.

    Attributes:
        model: the converted dual encoder (weights loaded, eval mode).
        image: the source model's image preprocessing, as ``preprocessing.json``
            ``image`` fields (``image_size``, ``fit``, ``mean``, ``std``, ``resample``,
            ``in_channels``, ...).
        text: its text preprocessing (``preprocessing.json`` ``text`` fields).
        zeroshot: the source's zero-shot rule (``{"scoring", "ensemble", "prompts"}``),
            or None when the towers are not aligned (nothing to score with).
        conversion: one paragraph: what was mapped onto what.
        notes: known differences from the original, listed in the model card.
        name: a human name for the model (``BiomedCLIP``).
        hub_name: the source's hub name when known (for users with a network).
        source_files: the files the weights came from (hashed for provenance).
    """

    model: MedVLModel
    image: dict[str, Any]
    text: dict[str, Any]
    zeroshot: dict[str, Any] | None
    conversion: str
    name: str
    notes: list[str] = field(default_factory=list)
    hub_name: str | None = None
    source_files: list[Path] = field(default_factory=list)


def read_json(path: Path, *, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a CheckpointError naming the file."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the {what}: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"the {what} is not a JSON object", path=path)
    return data


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a PyTorch pickle (``weights_only``).

    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model":
    ...}``) are unwrapped, and DataParallel's ``module.`` prefix is removed.

    Raises:
        CheckpointError: a missing or unreadable file, a TorchScript archive, or a
            pickle holding anything but tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path=path,
                              expected="a .safetensors, .bin, .pt or .pth file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"unreadable safetensors: {exc}", path=path) from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not loadable here"
        hint = ""
        if _is_torchscript(path):
            hint = " (a TorchScript archive: save its state_dict() with torch.save and import that)"
        raise CheckpointError(f"cannot read the checkpoint{hint}: {type(exc).__name__}",
                              path=path, expected="a state dict saved with torch.save") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError("the checkpoint holds no state dict", path=path,
                              expected="a mapping of parameter names to tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. epoch counters stored beside the weights
        state[key.removeprefix("module.")] = value
    if not state:
        raise CheckpointError("the checkpoint holds no tensors", path=path)
    return state


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (provenance: which weights were imported)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def take(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def hf_from_state(
    class_name: str,
    config: Any,
    state: dict[str, torch.Tensor],
    *,
    source: Path,
    what: str,
    **kwargs: Any,
) -> Any:
    """Load ``state`` (published transformers layout) into ``transformers.<class_name>``.

    Every weight of the model must be found and every tensor given must be used: a
    mapping that misses a key fails here rather than leaving random weights behind.

    Raises:
        CheckpointError: missing, unused or mis-shaped weights, naming ``source``.
    """
    import transformers
    from safetensors.torch import save_file

    cls = getattr(transformers, class_name)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        # buffers older transformers saved and current ones rebuild (not weights)
        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()
                   if k.rsplit(".", 1)[-1] not in _REBUILT_BUFFERS}
        save_file(tensors, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        model = from_pretrained(cls, tmp, source=source, what=what, **kwargs)
    return model


_REBUILT_BUFFERS = ("position_ids", "relative_position_index")


def from_pretrained(cls: Any, directory: str | Path, *, source: Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(directory)`` that refuses missing or unused weights.

    Raises:
        CheckpointError: any failure inside transformers, or weights that do not fit.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(str(directory), output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; report them as one
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"transformers cannot load the {what}: {type(exc).__name__}: "
                              f"{lines[0] if lines else ''}", path=source) from None
    problems = [(name, info.get(name) or []) for name in ("missing_keys", "unexpected_keys",
                                                          "mismatched_keys")]
    bad = [(name, sorted(str(k) for k in keys)) for name, keys in problems if keys]
    if bad:
        detail = "; ".join(f"{len(keys)} {name.replace('_', ' ')} (e.g. {keys[0]})" for name, keys in bad)
        raise CheckpointError(f"the {what} weights do not fit: {detail}", path=source,
                              expected=f"a {cls.__name__} checkpoint")
    return model.eval()


def assign(model: MedVLModel, values: dict[str, torch.Tensor], *, source: Path) -> None:
    """Load ``values`` (medvl state-dict keys) into ``model``; every key must be covered.

    Raises:
        CheckpointError: a key of the model without a value, or a value without a key.
    """
    from medvl.models.saving import state_mismatch

    mismatch = state_mismatch(model.state_dict(), values)
    if mismatch:
        raise CheckpointError("the converted weights do not fit the medvl model: " + mismatch,
                              path=source)
    model.load_state_dict(values, strict=True)
    model.eval()


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ``prefix`` put in front of every key."""
    return {prefix + k: v for k, v in state.items()}


def head_weights(prefix: str, linear: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A projection for a medvl global head and its local twin (the same weights).

    The local head starts as a copy of the global projection, so patch and word
    embeddings begin in the imported joint space (heatmaps and token losses work
    from the start).
    """
    out = {}
    for head in (f"{prefix}_head.", f"{prefix}_local_head."):
        out.update({head + k: v.clone() for k, v in linear.items()})
    return out


def tokenizer_dir(*candidates: Path | None, what: str) -> Path:
    """The first directory holding tokenizer files.

    Raises:
        CheckpointError: none does.
    """
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
             "spiece.model", "tokenizer.model")
    for cand in candidates:
        if cand is not None and Path(cand).is_dir() and any((Path(cand) / n).exists() for n in names):
            return Path(cand)
    raise CheckpointError(
        f"no tokenizer for the {what}", path=next((c for c in candidates if c), None),
        field="--tokenizer", expected="a Hugging Face tokenizer directory (tokenizer.json or vocab files)",
    )


def read_image_processor(directory: Path) -> dict[str, Any] | None:
    """The image fields of a Hugging Face ``preprocessor_config.json`` (None if absent).

    ``CLIPImageProcessor`` / ``BitImageProcessor`` (shortest side, then a centre crop)
    give ``fit: crop``; a fixed ``{height, width}`` with no crop (``SiglipImageProcessor``)
    gives ``fit: stretch``. PIL resampling 3 is bicubic, 2 bilinear.
    """
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = read_json(path, what="image processor config")
    size = cfg.get("size", {})
    crop = cfg.get("crop_size")
    out: dict[str, Any] = {"in_channels": 3}
    if cfg.get("do_center_crop") and crop:
        side = crop.get("height", crop.get("width")) if isinstance(crop, dict) else crop
        if side is None:
            raise CheckpointError("crop_size has neither height nor width", path=path, field="crop_size",
                                  expected="an integer or {height, width}")
        out.update(image_size=int(side), fit="crop")
    elif isinstance(size, dict) and "height" in size:
        out.update(image_size=int(size["height"]), fit="stretch")
    elif isinstance(size, dict) and "shortest_edge" in size:
        out.update(image_size=int(size["shortest_edge"]), fit="crop")
    elif isinstance(size, int):
        out.update(image_size=int(size), fit="crop")
    resample = {3: "bicubic", 2: "bilinear"}.get(int(cfg.get("resample", 2)), "bilinear")
    out["resample"] = resample
    if cfg.get("do_normalize", True):
        out["mean"] = [float(v) for v in cfg.get("image_mean", [0.5, 0.5, 0.5])]
        out["std"] = [float(v) for v in cfg.get("image_std", [0.5, 0.5, 0.5])]
    return out


def new_model(cfg: Any, *, text_hf: dict[str, Any], image_hf: dict[str, Any] | None,
              tokenizer: Path) -> MedVLModel:
    """An untrained medvl model of the imported architecture (weights come from
    :func:`assign`), built the way a saved model directory is rebuilt."""
    from medvl.models.model import MedVLModel

    return MedVLModel(cfg, load_pretrained=False,
                      saved_text={"hf_config": text_hf, "tokenizer_dir": tokenizer},
                      saved_image=image_hf)

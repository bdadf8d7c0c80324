"""Unit-norm global embeddings of model-input batches and of texts.

The primitives every caller shares (eval, index, ``medvl embed``, the pipeline): the
model runs in inference mode on its own device and the global embeddings come back as
float32 numpy arrays of unit L2 norm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvl.errors import ModelError


def model_device(model: Any) -> Any:
    """The device of the model's first parameter (CPU for a parameter-less fake)."""
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def unit_rows(x: Any) -> np.ndarray:
    """A tensor ``(..., D)`` -> float32 numpy with unit L2 norm along the last axis."""
    import torch

    t = x.detach().float()
    t = torch.nn.functional.normalize(t, dim=-1)
    return t.cpu().numpy().astype(np.float32)


def embed_images(model: Any, image: Any) -> np.ndarray:
    """Unit-norm global embeddings ``(B, D)`` of an image batch tensor ``(B, C, *spatial)``."""
    import torch

    with torch.inference_mode():
        out = model.encode_image(image.to(model_device(model)))
    if out.embeds.ndim != 2:
        raise ModelError(
            f"encode_image returned embeds of shape {tuple(out.embeds.shape)}", field="embeds", expected="(B, D)"
        )
    return unit_rows(out.embeds)


def embed_texts(model: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm global embeddings ``(N, D)`` of texts (as given: no preparation), in batches."""
    import torch

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            out = model.embed_texts(list(texts[lo : lo + batch_size]))
            parts.append(unit_rows(out.embeds))
    return np.concatenate(parts, axis=0)

"""Phrase heatmaps: where in an image a phrase's evidence lies, and how it was computed.

Two methods, chosen by what the model directory says trained it:

* ``local``: cosine similarity between the phrase's word tokens (the text tower's
  local embeddings, averaged over words; or its global embedding when the tower has no
  word tokens) and the image's local (patch) embeddings, laid out on the encoder's
  ``grid`` and upsampled to the model input. Meaningful only when a token-level loss
  (MGCA, GLoRIA) trained the local heads.
* ``cam`` (class-activation style, Zhou et al. 2016): the *global* image head applied
  to each local token feature, weighted as the encoder's pooling weights it, and
  compared with the phrase's global embedding. For mean pooling and a linear head the
  token contributions sum exactly to the global image-phrase cosine similarity the
  retrieval and zero-shot scores use, so the map shows where that score comes from.
  It needs only the global heads, which every trained model has.

A model whose local heads were never trained gets ``cam`` (``local`` on such a model
is a map of random projections). For volumes, native 3D patch tokens give a 3D map and
slice tokens (``grid == (n_slices,)``) a per-slice profile spread over each slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medvl.errors import ModelError

HeatmapMethod = Literal["local", "cam"]
METHODS = ("local", "cam")


@dataclass
class Heatmap:
    """A phrase's heatmap over one image.

    Attributes:
        array: float32 in [0, 1] over the image region of the model input (padding
            removed): ``(h, w)`` for a radiograph, ``(d, h, w)`` for a volume in the
            model's display axes; ``None`` when no honest map can be made.
        method: ``"local"``, ``"cam"``, or ``None`` with ``array``.
        reason: why this method (or why no map), in a plain sentence.
        source_box: for 2D, ``(row0, row1, col0, col1)``: the part of the source image the
            array covers (all of it with ``fit: pad``; the centre with ``fit: crop``).
    """

    array: np.ndarray | None
    method: HeatmapMethod | None
    reason: str
    source_box: tuple[int, int, int, int] | None = None


def as_batch(image: Any, spatial_dims: int | None = None) -> tuple[Any, int]:
    """Image tensor/array -> ``(1, C, *spatial)`` float tensor and its spatial dims."""
    import torch

    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    if x.ndim == 2:
        return x[None, None], 2
    if x.ndim == 3:
        return x[None], 2  # (C, H, W)
    if x.ndim == 4:
        if spatial_dims == 2:
            return x, 2  # (1, C, H, W)
        return x[None], 3  # (C, D, H, W)
    if x.ndim == 5:
        return x, 3
    raise ModelError(f"image has shape {tuple(x.shape)}", field="image",
                     expected="(C, H, W), (C, D, H, W) or one of them with a batch of 1")


QUERY_MODES = ("auto", "words", "global")


def local_similarity(
    model: Any, image: Any, phrase: str, *, spatial_dims: int | None = None, query: str = "auto"
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Cosine similarity of each local image token to the phrase, on the encoder's grid.

    Args:
        query: ``words`` compares each image token with each of the phrase's word tokens
            (the text tower's local embeddings, the space token-level losses align with
            image tokens) and averages over words; ``global`` uses the phrase's global
            embedding; ``auto`` takes words when the text tower returns them.

    Returns:
        ``(similarity over grid, grid, spatial shape of the input)``.
    """
    import torch

    from medvl.inference.embedding import model_device

    x, _ = as_batch(image, spatial_dims)
    with torch.inference_mode():
        out = model.encode_image(x.to(model_device(model)))
        txt = model.embed_texts([phrase])
    if out.local_embeds is None or out.grid is None:
        raise ModelError("the image encoder returns no local embeddings, so no heatmap", field="local_embeds")
    grid = tuple(int(g) for g in out.grid)
    loc = out.local_embeds[0].float()  # (N, D)
    n = int(np.prod(grid))
    if loc.shape[0] < n:
        raise ModelError(f"{loc.shape[0]} local tokens for grid {grid}", field="grid", expected=f"{n} tokens")
    # Tokens beyond the grid (e.g. padding slots) are not spatial; they come last by contract.
    loc = torch.nn.functional.normalize(loc[:n], dim=-1)
    words = txt.local_embeds
    if query not in QUERY_MODES:
        raise ValueError(f"query={query!r}; expected one of {QUERY_MODES}")
    if query == "words" and words is None:
        raise ModelError("the text encoder returns no word embeddings", field="local_embeds")
    if query != "global" and words is not None:
        w = words[0].float().to(loc.device)
        if txt.local_mask is not None:
            w = w[txt.local_mask[0].to(loc.device).bool()]
        w = torch.nn.functional.normalize(w, dim=-1)  # (W, D)
        sim_t = (loc @ w.T).mean(dim=1) if w.shape[0] else torch.zeros(loc.shape[0])
    else:
        q = torch.nn.functional.normalize(txt.embeds[0].float().to(loc.device), dim=-1)
        sim_t = loc @ q
    sim = sim_t.cpu().numpy().reshape(grid)
    return sim, grid, tuple(int(s) for s in x.shape[2:])


def upsample(grid_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a token map to the input's spatial shape (bilinear / trilinear / per-slice)."""
    import torch
    import torch.nn.functional as F

    g = torch.from_numpy(np.ascontiguousarray(grid_map, dtype=np.float32))
    if g.ndim == 1 and len(shape) == 3:
        # Slice tokens: a profile over depth, constant over each slice.
        prof = F.interpolate(g[None, None], size=shape[0], mode="linear", align_corners=False)[0, 0]
        return np.broadcast_to(prof.numpy()[:, None, None], shape).copy()
    if g.ndim != len(shape):
        raise ModelError(f"grid {tuple(g.shape)} does not fit an input of shape {shape}", field="grid")
    mode = "bilinear" if g.ndim == 2 else "trilinear"
    return F.interpolate(g[None, None], size=shape, mode=mode, align_corners=False)[0, 0].numpy()


def phrase_heatmap(
    model: Any,
    image_tensor: Any,
    phrase: str,
    *,
    normalize: bool = True,
    spatial_dims: int | None = None,
    query: str = "auto",
) -> np.ndarray:
    """The ``local`` heatmap of ``phrase`` over a model input, at its spatial shape.

    This is the patch-word map whatever trained the model; ``medvl.load(dir).heatmap``
    chooses the method the model directory supports (:func:`choose_method`).

    Args:
        model: a ``MedVLModel`` (``encode_image`` with local embeddings and ``grid``,
            ``embed_texts``).
        image_tensor: the model input, ``(C, H, W)`` or ``(C, D, H, W)`` (a leading batch of
            1 is accepted; pass ``spatial_dims=2`` for a ``(1, C, H, W)`` radiograph).
        phrase: any text, e.g. ``"left pleural effusion"``.
        normalize: min-max scale to [0, 1] (a constant map becomes zeros); otherwise the
            raw cosine similarities.
        spatial_dims: 2 or 3 when the input's layout is ambiguous.
        query: ``auto`` / ``words`` / ``global``, see :func:`local_similarity`.

    Returns:
        float32 ``(H, W)`` or ``(D, H, W)``.
    """
    sim, _, shape = local_similarity(model, image_tensor, phrase, spatial_dims=spatial_dims, query=query)
    heat = upsample(sim, shape).astype(np.float32)
    return minmax(heat) if normalize else heat


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes zeros."""
    lo, hi = float(np.min(x)), float(np.max(x))
    return ((x - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(x, dtype=np.float32)


def cam_similarity(
    model: Any, image: Any, phrase: str, *, spatial_dims: int | None = None
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Each local token's contribution to the global image-phrase cosine similarity.

    With pooling weights ``w`` (the encoder's attention when it reports one, else the
    uniform weights of mean pooling), global head ``h`` and unit phrase embedding ``q``:
    ``contribution_i = w_i * <h(token_i), q> / ||sum_j w_j h(token_j)||``. For mean
    pooling and a linear head, ``sum_j w_j h(token_j) = h(pooled)``, so the
    contributions sum to ``cos(image embedding, q)`` exactly; for an MLP head it is
    the usual first-order approximation.

    Returns:
        ``(contribution over grid, grid, spatial shape of the input)``.

    Raises:
        ModelError: the model has no image tower tokens or global head to apply.
    """
    import torch

    from medvl.inference.embedding import model_device

    encoder = getattr(model, "image_encoder", None)
    head = getattr(model, "image_head", None)
    if encoder is None or head is None:
        raise ModelError("the model exposes no image encoder and global head", field="image_head")
    x, _ = as_batch(image, spatial_dims)
    x = x.to(model_device(model))
    with torch.inference_mode():
        if hasattr(encoder, "check_input"):
            encoder.check_input(x)
        feats = encoder(x)
        txt = model.embed_texts([phrase])
    grid = tuple(int(g) for g in feats.grid)
    n = int(np.prod(grid))
    tokens = feats.tokens[0].float()
    if tokens.shape[0] < n:
        raise ModelError(f"{tokens.shape[0]} tokens for grid {grid}", field="grid", expected=f"{n} tokens")
    with torch.inference_mode():
        h = head(feats.tokens[0, :n]).float()  # (N, D): the global head on every token
    if feats.attention is not None:
        w = feats.attention[0, :n].float().clamp(min=0)
    else:
        w = torch.ones(n, device=h.device)
    if feats.mask is not None:
        w = w * feats.mask[0, :n].float()
    w = w / w.sum().clamp(min=1e-12)
    q = torch.nn.functional.normalize(txt.embeds[0].float().to(h.device), dim=-1)
    pooled = (w[:, None] * h).sum(0)  # (D,)
    contrib = w * (h @ q) / pooled.norm().clamp(min=1e-12)
    return contrib.cpu().numpy().reshape(grid), grid, tuple(int(s) for s in x.shape[2:])


def heatmap_on_input(
    model: Any, image_tensor: Any, phrase: str, *, method: HeatmapMethod, spatial_dims: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """A ``local`` or ``cam`` heatmap over the whole model input (padding included)."""
    if method == "local":
        sim, _, shape = local_similarity(model, image_tensor, phrase, spatial_dims=spatial_dims)
    elif method == "cam":
        sim, _, shape = cam_similarity(model, image_tensor, phrase, spatial_dims=spatial_dims)
    else:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    heat = upsample(sim, shape).astype(np.float32)
    return minmax(heat) if normalize else heat


def choose_method(training: dict[str, Any] | None, requested: str = "auto") -> tuple[HeatmapMethod | None, str]:
    """The heatmap method a model directory supports, and why.

    Args:
        training: ``config.json``'s ``"training"`` entry (``None``: not recorded).
        requested: ``"auto"``, ``"local"`` or ``"cam"``.

    Returns:
        ``(method, reason)``; method ``None`` when the request cannot be honoured.
    """
    trained = (training or {}).get("local_heads_trained")
    if requested not in ("auto", *METHODS):
        raise ValueError(f"method={requested!r}; expected 'auto', 'local' or 'cam'")
    if requested == "cam":
        return "cam", "class-activation map of the global image head (asked for)"
    if trained is True:
        return "local", "patch-word similarity of the local heads, which a token-level loss trained"
    why = ("the local heads were never trained (the loss had no token-level term)" if trained is False
           else "the model directory does not record that its local heads were trained")
    if requested == "local":
        return None, f"no local heatmap: {why}, so it would show random projections"
    return "cam", f"class-activation map of the global image head: {why}"

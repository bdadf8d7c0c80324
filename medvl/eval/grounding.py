"""Phrase grounding: a heatmap for any phrase, scored against annotated masks and boxes.

The heatmap of a phrase is the cosine similarity between the phrase's word tokens (the
text tower's local embeddings, averaged over words; or its global embedding when the
tower has no word tokens) and the image's local (patch) embeddings, laid out on the
encoder's ``grid`` and upsampled to the model input. Word tokens are the default because
the local heads of both towers are what token-level losses (MGCA, GLoRIA) align. For volumes, native 3D patch tokens give a 3D map and
slice tokens (``grid == (n_slices,)``) give a per-slice profile spread over each slice.

Scoring happens on the model's input grid: an annotation's mask (PNG or NIfTI, or a box)
goes through the same geometric steps as the image (the data room's
``ModelInputTransform``: axis order, aspect-preserving resize and padding), so the
heatmap and the mask line up voxel for voxel.

* **pointing game**: a hit when the heatmap's maximum falls inside the mask.
* **mask IoU**: the heatmap, min-max scaled to [0, 1], thresholded at ``threshold``,
  against the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import ManifestError, ModelError


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

    from medvl.eval.embed import model_device

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
    """Heatmap of ``phrase`` over an image, at the image's spatial shape.

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


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """True when the heatmap's maximum lies inside the mask (ties: any maximum counts)."""
    m = np.asarray(mask, dtype=bool)
    if m.shape != heatmap.shape:
        raise ValueError(f"mask {m.shape} and heatmap {heatmap.shape} differ")
    return bool(np.any(m & (heatmap >= heatmap.max())))


def mask_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``minmax(heatmap) >= threshold`` with the mask."""
    m = np.asarray(mask, dtype=bool)
    pred = minmax(heatmap) >= threshold
    union = np.sum(pred | m)
    return float(np.sum(pred & m) / union) if union else float("nan")


def phrase_for(annotation: dict[str, Any]) -> str:
    """The phrase grounded for an annotation: laterality + the finding's display name."""
    from medvl.findings import load_findings

    display = {f.name: f.display for f in load_findings()}
    name = display.get(annotation["finding"], annotation["finding"].replace("_", " "))
    lat = annotation.get("laterality")
    return f"{lat} {name.lower()}" if lat and lat not in ("none", "n/a") else name.lower()


def annotation_mask(annotation: dict[str, Any], manifest_path: str | Path, image_path: Path, dataset: Any) -> np.ndarray:
    """An annotation's mask (file or box) on the model's input grid, bool ``(H, W)`` / ``(D, H, W)``.

    Uses the dataset's own deterministic transform so geometry matches the image exactly.

    Raises:
        ManifestError: the mask file is missing or unreadable, or the box is malformed.
    """
    from medvl.data.manifest import resolve_path
    from medvl.errors import MedvlError
    from medvl.io import read_image

    transform = dataset.transform
    dims = dataset.cfg.dims
    if annotation.get("mask"):
        path = resolve_path(manifest_path, annotation["mask"])
        if not path.exists():
            raise ManifestError("annotation mask not found", path=path, field="annotations.mask")
        try:
            img = read_image(path)
        except MedvlError as exc:
            raise ManifestError(f"annotation mask unreadable: {exc}", path=path, field="annotations.mask") from None
        arr = np.asarray(img.array)
        if arr.ndim == dims + 1:  # colour PNG: any channel set
            arr = arr.max(axis=-1)
        raw = (arr > 0).astype(np.float32)
        spacing = img.spacing
    elif annotation.get("box"):
        box = [int(round(v)) for v in annotation["box"]]
        img = read_image(image_path)
        shape = np.asarray(img.array).shape[:dims]
        raw = np.zeros(shape, np.float32)
        if dims == 2 and len(box) == 4:
            x0, y0, x1, y1 = box
            raw[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = 1.0  # rows are y, columns x
        elif dims == 3 and len(box) == 6:
            x0, y0, z0, x1, y1, z1 = box
            raw[max(0, x0) : x1 + 1, max(0, y0) : y1 + 1, max(0, z0) : z1 + 1] = 1.0
        else:
            raise ManifestError(f"box {annotation['box']}", field="annotations.box",
                                expected="[x0, y0, x1, y1] (2D) or [x0, y0, z0, x1, y1, z1] (3D)")
        spacing = img.spacing
    else:
        raise ManifestError("annotation has neither mask nor box", field="annotations")
    # The data room's spatial steps only: same axis order, resize and padding as the image.
    grid = transform.grid(raw[None], spacing if dims == 3 else None)
    return np.asarray(grid[0]) >= 0.5


def evaluate_grounding(
    model: Any,
    manifest_path: str | Path,
    split: str,
    data_cfg: Any,
    *,
    threshold: float = 0.5,
    out_dir: Path | None = None,
    max_figures: int = 4,
) -> dict[str, Any]:
    """Pointing game and mask IoU over every annotation with a mask or box in the split.

    Returns:
        ``{"n_cases", "pointing_game", "mask_iou", "per_class": {finding: {...}}, "errors"}``.
    """
    from medvl.data import build_dataset
    from medvl.errors import MedvlError

    ds = build_dataset(data_cfg, manifest_path, split)
    per: dict[str, dict[str, list[float]]] = {}
    errors: list[dict[str, str]] = []
    figures: list[str] = []
    for i, row in enumerate(ds.rows):
        anns = [a for a in row.annotations if a.get("mask") or a.get("box")]
        if not anns:
            continue
        try:
            image = ds.load_image(i)
        except Exception as exc:  # noqa: BLE001 - same policy as the dataset: skip, record
            errors.append({"study_id": row.study_id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for a in anns:
            try:
                mask = annotation_mask(a, manifest_path, ds.image_path(i), ds)
            except MedvlError as exc:
                errors.append({"study_id": row.study_id, "error": str(exc)})
                continue
            if not mask.any():
                errors.append({"study_id": row.study_id, "error": "mask is empty on the model grid"})
                continue
            phrase = phrase_for(a)
            heat = phrase_heatmap(model, image, phrase, spatial_dims=ds.cfg.dims)
            rec = per.setdefault(a["finding"], {"hit": [], "iou": []})
            rec["hit"].append(float(pointing_game(heat, mask)))
            rec["iou"].append(mask_iou(heat, mask, threshold))
            if out_dir is not None and len(figures) < max_figures:
                figures.append(_save_overlay(image, heat, mask, f"{row.study_id}: {phrase}", out_dir,
                                             f"{row.study_id}_{a['finding']}").name)
    hits = [h for r in per.values() for h in r["hit"]]
    ious = [v for r in per.values() for v in r["iou"] if not np.isnan(v)]
    return {
        "n_cases": len(hits),
        "threshold": threshold,
        "pointing_game": float(np.mean(hits)) if hits else float("nan"),
        "mask_iou": float(np.mean(ious)) if ious else float("nan"),
        "per_class": {
            f: {"n": len(r["hit"]), "pointing_game": float(np.mean(r["hit"])),
                "mask_iou": float(np.nanmean(r["iou"])) if not np.all(np.isnan(r["iou"])) else float("nan")}
            for f, r in per.items()
        },
        "errors": errors,
        "figures": figures,
    }


def _save_overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray, title: str, out_dir: Path, name: str) -> Path:
    """A PNG of the image (middle slice for volumes), heatmap and mask outline."""
    from medvl.eval.plots import _plt

    plt = _plt()
    img = np.asarray(image)[0]
    if img.ndim == 3:
        z = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        img, heat, mask = img[z], heat[z], mask[z]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(img, cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.35)
    ax.contour(mask.astype(float), levels=[0.5], colors="w", linewidths=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    path = Path(out_dir) / "grounding" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

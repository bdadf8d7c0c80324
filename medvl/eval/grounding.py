"""Phrase grounding metrics: heatmaps scored against annotated masks and boxes.

The heatmaps themselves (``local`` patch-word similarity, ``cam`` global-head map) are
made by :mod:`medvl.inference.heatmap`, the same code ``medvl.load(...).heatmap`` and
the viewer use.

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

from medvl.errors import ManifestError
from medvl.inference.heatmap import (
    QUERY_MODES,
    HeatmapMethod,
    as_batch,
    heatmap_on_input,
    local_similarity,
    minmax,
    phrase_heatmap,
    upsample,
)

__all__ = ["QUERY_MODES", "annotation_mask", "as_batch", "evaluate_grounding", "local_similarity", "mask_iou",
           "minmax", "phrase_for", "phrase_heatmap", "pointing_game", "upsample"]


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
        box = [round(v) for v in annotation["box"]]
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
    method: HeatmapMethod = "local",
) -> dict[str, Any]:
    """Pointing game and mask IoU over every annotation with a mask or box in the split.

    ``method`` is the heatmap method (``local`` or ``cam``, see
    :mod:`medvl.inference.heatmap`); ``medvl.eval.evaluate`` passes the one the model
    directory supports, and the results record it.

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
            heat = heatmap_on_input(model, image, phrase, method=method, spatial_dims=ds.cfg.dims)
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
        "method": method,
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

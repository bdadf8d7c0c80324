"""Grounding figures the ablation adds next to ``medvl.eval``'s pointing game.

``medvl.eval`` scores a phrase's heatmap in the *local* space (the image and text
``local_head`` projections), the space the token term aligns. A model trained with the
instance term alone never trains those local heads, so its heatmaps are random
projections of trained features: a comparison on that metric alone would reward the
token term partly for *having* trained heads at all. Two extra figures make the
comparison fair and interpretable:

* **global-head pointing game**: every image token projected with the *global* image
  head (the head the instance term trains; the global embedding is that head applied
  to the mean of the tokens) and compared with the phrase's global embedding, the
  CAM-like map an instance-only model can give;
* **chance**: the expected hit rate of a uniformly random point, i.e. the mean
  fraction of the model grid the mask covers.

Masks, phrases and the model input come from ``medvl.eval.grounding`` and the data
room's dataset, so geometry is identical to ``medvl.eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class GroundingCase:
    """One annotated finding of one study: model input, mask on the input grid, phrase."""

    study_id: str
    finding: str
    phrase: str
    image: np.ndarray  # (C, H, W) model input
    mask: np.ndarray  # (H, W) bool


def load_cases(manifest: str | Path, data_cfg: dict[str, Any], split: str = "test") -> list[GroundingCase]:
    """Every annotation with a mask or box in ``split`` (unreadable ones are skipped, as in medvl.eval)."""
    from medvl.data import build_dataset
    from medvl.errors import MedvlError
    from medvl.eval.grounding import annotation_mask, phrase_for

    ds = build_dataset(data_cfg, manifest, split)
    cases: list[GroundingCase] = []
    for i, row in enumerate(ds.rows):
        anns = [a for a in row.annotations if a.get("mask") or a.get("box")]
        if not anns:
            continue
        try:
            image = np.asarray(ds.load_image(i), dtype=np.float32)
        except Exception:  # noqa: BLE001, S112 - medvl.eval skips unreadable studies the same way (and records them)
            continue
        for a in anns:
            try:
                mask = annotation_mask(a, manifest, ds.image_path(i), ds)
            except MedvlError:
                continue
            if mask.any():
                cases.append(GroundingCase(row.study_id, a["finding"], phrase_for(a), image, mask))
    return cases


def chance_pointing(cases: list[GroundingCase]) -> dict[str, Any]:
    """Hit rate of a uniformly random point: mean mask area fraction, overall and per finding."""
    per: dict[str, list[float]] = {}
    for c in cases:
        per.setdefault(c.finding, []).append(float(c.mask.mean()))
    every = [v for vs in per.values() for v in vs]
    return {
        "n_cases": len(every),
        "pointing_game": float(np.mean(every)) if every else float("nan"),
        "per_class": {f: {"n": len(v), "pointing_game": float(np.mean(v))} for f, v in sorted(per.items())},
    }


def global_head_pointing(model: Any, cases: list[GroundingCase], batch_size: int = 32) -> dict[str, Any]:
    """Pointing game with tokens through the *global* image head against the phrase's global embedding."""
    import torch
    import torch.nn.functional as F

    from medvl.eval.grounding import pointing_game, upsample

    model.eval()
    device = next(model.parameters()).device
    phrases = sorted({c.phrase for c in cases})
    per: dict[str, list[float]] = {}
    with torch.inference_mode():
        q = F.normalize(model.embed_texts(phrases).embeds.float(), dim=-1)  # (P, D)
        q_of = dict(zip(phrases, q, strict=True))
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            x = torch.from_numpy(np.stack([c.image for c in chunk])).to(device)
            model.image_encoder.check_input(x)
            feats = model.image_encoder(x)
            grid = tuple(int(g) for g in feats.grid)
            n = int(np.prod(grid))
            tok = F.normalize(model.image_head(feats.tokens[:, :n]).float(), dim=-1)  # (B, N, D)
            for c, t in zip(chunk, tok, strict=True):
                sim = (t @ q_of[c.phrase]).cpu().numpy().reshape(grid)
                heat = upsample(sim, c.mask.shape)
                per.setdefault(c.finding, []).append(float(pointing_game(heat, c.mask)))
    every = [v for vs in per.values() for v in vs]
    return {
        "n_cases": len(every),
        "pointing_game": float(np.mean(every)) if every else float("nan"),
        "per_class": {f: {"n": len(v), "pointing_game": float(np.mean(v))} for f, v in sorted(per.items())},
    }

"""Grounding figures of one model on the synthetic corpus's annotated test findings.

Maps are computed the way ``medvl.eval.grounding`` computes them, batched so one image
forward serves every phrase and method:

* ``local``: each image token through the *local* image head against the phrase's word
  tokens through the local text head, cosine averaged over words (``medvl.eval``'s
  ``phrase_heatmap``; :func:`check_against_medvl_eval` asserts the two agree);
* ``cam``: ``medvl.inference.heatmap.cam_similarity``'s class-activation-style map,
  each image token through the *global* image head against the phrase's unit global
  embedding (with mean pooling and a linear head these contributions sum to the global
  image-phrase cosine), the map a model whose local heads never trained can give.

:func:`check_against_medvl_eval` runs ``medvl.eval``'s ``evaluate_grounding`` with each
method and asserts it scores the same as the batched maps here.

Per annotated finding the map is upsampled to the model input (``medvl.eval``'s
``upsample``) and scored with ``medvl.eval``'s ``pointing_game``. For findings with a
side (left or right), three more figures say *what* the map follows:

* side of the peak (the mean column of the maximum's pixels against the image's
  vertical midline; the patient's right is on the image left), against the truth;
* Pearson correlation of the map with the mask and with the mask mirrored left-right;
* the same peak side for the phrase without its side ("pleural effusion") and with the
  opposite side ("right pleural effusion" for a left effusion): a map that follows the
  image keeps the true side, a map that follows the words moves.

*Image-specific pointing*: the same peak scored against the masks of the *other* test
cases with the same phrase (``hit_other``; pooled as ``pointing_game_other``). A map that
only knows where the phrase's finding usually sits (a prior, read from the words) hits
other patients' masks as often as this patient's, so ``pointing_gain`` = pointing game -
``pointing_game_other`` is ~0 for it; only information taken from *this* image raises it.

References that need no model: chance (the mask's share of the image) and two *prior*
maps built from the training split's masks: the mean mask of the finding (where it
usually sits) and the mean mask of the finding on that side (what a model that reads
the side from the phrase and ignores the image could point at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The large findings the issue's target is about.
LARGE = ("pleural_effusion", "pneumothorax", "consolidation", "cardiomegaly", "edema")
SIDES = ("left", "right")


@dataclass
class Case:
    """One annotated finding of one test image."""

    study_id: str
    image_index: int  # row in the images array
    finding: str
    laterality: str | None
    phrase: str
    mask: np.ndarray  # (H, W) bool, on the model input grid
    variants: dict[str, str] = field(default_factory=dict)  # "no_side" / "opposite" -> phrase


def _phrase_variants(annotation: dict[str, Any]) -> dict[str, str]:
    from medvl.eval.grounding import phrase_for

    lat = annotation.get("laterality")
    if lat not in SIDES:
        return {}
    other = "right" if lat == "left" else "left"
    return {"no_side": phrase_for({**annotation, "laterality": None}),
            "opposite": phrase_for({**annotation, "laterality": other})}


def load_cases(manifest: str | Path, data_cfg: dict[str, Any], split: str = "test") -> tuple[np.ndarray, list[Case]]:
    """Model inputs of every study with an annotation, and one :class:`Case` per annotation.

    Uses ``medvl.eval.grounding``'s ``annotation_mask`` and ``phrase_for``, so masks and
    phrases are those ``medvl.eval`` scores. Unreadable studies and empty masks are
    skipped, as ``medvl.eval`` does.
    """
    from medvl.data import build_dataset
    from medvl.errors import MedvlError
    from medvl.eval.grounding import annotation_mask, phrase_for

    ds = build_dataset(data_cfg, manifest, split)
    images: list[np.ndarray] = []
    cases: list[Case] = []
    for i, row in enumerate(ds.rows):
        anns = [a for a in row.annotations if a.get("mask") or a.get("box")]
        if not anns:
            continue
        try:
            image = np.asarray(ds.load_image(i), dtype=np.float32)
        except Exception:  # noqa: BLE001, S112 - medvl.eval skips unreadable studies too
            continue
        added = False
        for a in anns:
            try:
                mask = annotation_mask(a, manifest, ds.image_path(i), ds)
            except MedvlError:
                continue
            if not mask.any():
                continue
            cases.append(Case(row.study_id, len(images), a["finding"], a.get("laterality"), phrase_for(a),
                              mask, _phrase_variants(a)))
            added = True
        if added:
            images.append(image)
    return np.stack(images), cases


def prior_maps(manifest: str | Path, data_cfg: dict[str, Any], split: str = "train") -> dict[str, np.ndarray]:
    """Mean training mask per finding (key ``finding``) and per finding and side (``finding/left``)."""
    _, cases = load_cases(manifest, data_cfg, split)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for c in cases:
        keys = [c.finding] + ([f"{c.finding}/{c.laterality}"] if c.laterality in SIDES else [])
        for k in keys:
            sums[k] = sums.get(k, 0) + c.mask.astype(np.float64)
            counts[k] = counts.get(k, 0) + 1
    return {k: (v / counts[k]).astype(np.float32) for k, v in sums.items()}


def encode_images(model: Any, images: np.ndarray, batch_size: int = 16) -> dict[str, Any]:
    """Unit-norm image tokens through the local head; global-head projections (not normalised, as CAM)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    local, cam = [], []
    grid: tuple[int, ...] = ()
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s : s + batch_size]).to(model.device)
            model.image_encoder.check_input(x)
            feats = model.image_encoder(x)
            grid = tuple(int(g) for g in feats.grid)
            n = int(np.prod(grid))
            tokens = feats.tokens[:, :n]  # (B, N, C); tokens beyond the grid are not spatial
            local.append(F.normalize(model.image_local_head(tokens).float(), dim=-1))
            # cam_similarity: w_i <h(token_i), q> / ||h(pooled)||; the weights are uniform for
            # these CNN towers and the norm is one positive number per image, so the
            # argmax, the side and the correlations are those of <h(token_i), q>.
            cam.append(model.image_head(tokens).float())
    return {"local": torch.cat(local), "cam": torch.cat(cam), "grid": grid}


def encode_phrases(model: Any, phrases: list[str]) -> dict[str, dict[str, Any]]:
    """Per phrase: unit-norm word tokens (local head) and the unit-norm global embedding."""
    import torch
    import torch.nn.functional as F

    out: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        for p in phrases:
            txt = model.embed_texts([p])
            words = txt.local_embeds[0].float()
            if txt.local_mask is not None:
                words = words[txt.local_mask[0].bool()]
            out[p] = {"words": F.normalize(words, dim=-1), "global": F.normalize(txt.embeds[0].float(), dim=-1)}
    return out


def grid_map(tokens: Any, query: dict[str, Any], method: str, grid: tuple[int, ...]) -> np.ndarray:
    """The phrase's similarity map on the token grid, as ``medvl.eval.grounding.local_similarity``."""
    if method == "local":
        sim = (tokens @ query["words"].T).mean(dim=1)
    else:
        sim = tokens @ query["global"]
    return sim.cpu().numpy().reshape(grid)


def _peak_side(heat: np.ndarray) -> str:
    """Patient side of the map's peak: image left = patient right (frontal radiographs)."""
    cols = np.nonzero(heat >= heat.max())[1]
    return "right" if float(cols.mean()) < (heat.shape[1] - 1) / 2 else "left"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def other_mask_hits(peaks: list[np.ndarray], cases: list[Case]) -> list[float]:
    """Per case: share of the other test cases with the same phrase whose mask holds this case's peak.

    Args:
        peaks: per case, the bool map of the heatmap's maximum pixels (the pointing-game peak).
        cases: the cases, in the same order; "other" = same phrase, another image.

    Returns:
        One value per case (``nan`` when no other case has the phrase).
    """
    out = []
    for i, c in enumerate(cases):
        others = [j for j, o in enumerate(cases) if o.phrase == c.phrase and o.image_index != c.image_index]
        out.append(float(np.mean([np.any(peaks[i] & cases[j].mask) for j in others])) if others else float("nan"))
    return out


def score_maps(model: Any, images: np.ndarray, cases: list[Case], methods: tuple[str, ...] = ("local", "cam"),
               other_phrase: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per method, one record per case: hit, peak side, correlations, phrase variants.

    Args:
        other_phrase: finding -> a phrase of another finding, whose map on the same
            image is correlated with the finding's own map (phrase dependence).
    """
    from medvl.eval.grounding import pointing_game, upsample

    other_phrase = other_phrase or {}
    enc = encode_images(model, images)
    phrases = sorted({c.phrase for c in cases} | {v for c in cases for v in c.variants.values()}
                     | set(other_phrase.values()))
    q = encode_phrases(model, phrases)
    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        recs = []
        peaks = []
        for c in cases:
            tokens = enc[method][c.image_index]
            g = grid_map(tokens, q[c.phrase], method, enc["grid"])
            heat = upsample(g, c.mask.shape)
            peaks.append(heat >= heat.max())
            rec: dict[str, Any] = {"finding": c.finding, "laterality": c.laterality,
                                   "hit": float(pointing_game(heat, c.mask))}
            if c.finding in other_phrase:
                rec["corr_other_phrase"] = _corr(g, grid_map(tokens, q[other_phrase[c.finding]], method, enc["grid"]))
            if c.laterality in SIDES:
                rec["side_ok"] = float(_peak_side(heat) == c.laterality)
                rec["corr_mask"] = _corr(heat, c.mask)
                rec["corr_mirror"] = _corr(heat, c.mask[:, ::-1])
                for name, phrase in c.variants.items():
                    h = upsample(grid_map(tokens, q[phrase], method, enc["grid"]), c.mask.shape)
                    rec[f"{name}_side_ok"] = float(_peak_side(h) == c.laterality)
                    rec[f"{name}_hit"] = float(pointing_game(h, c.mask))
            recs.append(rec)
        for rec, h in zip(recs, other_mask_hits(peaks, cases), strict=True):
            rec["hit_other"] = h
        out[method] = recs
    return out


def score_priors(cases: list[Case], priors: dict[str, np.ndarray]) -> dict[str, list[dict[str, Any]]]:
    """Records like :func:`score_maps` for the chance level and the two prior maps."""
    from medvl.eval.grounding import pointing_game

    out: dict[str, list[dict[str, Any]]] = {"chance": [], "prior": [], "side_prior": []}
    peaks: dict[str, list[np.ndarray]] = {"prior": [], "side_prior": []}
    kept: dict[str, list[Case]] = {"prior": [], "side_prior": []}
    for c in cases:
        out["chance"].append({"finding": c.finding, "laterality": c.laterality, "hit": float(c.mask.mean())})
        for name, key in (("prior", c.finding), ("side_prior", f"{c.finding}/{c.laterality}")):
            heat = priors.get(key, priors.get(c.finding))
            if heat is None:
                continue
            peaks[name].append(heat >= heat.max())
            kept[name].append(c)
            rec: dict[str, Any] = {"finding": c.finding, "laterality": c.laterality,
                                   "hit": float(pointing_game(heat, c.mask))}
            if c.laterality in SIDES:
                rec["side_ok"] = float(_peak_side(heat) == c.laterality)
                rec["corr_mask"] = _corr(heat, c.mask)
                rec["corr_mirror"] = _corr(heat, c.mask[:, ::-1])
            out[name].append(rec)
    for name, pk in peaks.items():
        for rec, h in zip(out[name], other_mask_hits(pk, kept[name]), strict=True):
            rec["hit_other"] = h
    return out


def summarize(records: list[dict[str, Any]], findings: tuple[str, ...] = LARGE) -> dict[str, Any]:
    """Means over the records of ``findings``: pooled, per finding, and the lateral diagnostics."""
    def mean(vals: list[float]) -> float:
        vals = [v for v in vals if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    sel = [r for r in records if r["finding"] in findings]
    lat = [r for r in sel if "side_ok" in r]
    per = {f: {"n": sum(r["finding"] == f for r in sel), "pointing_game": mean([r["hit"] for r in sel if r["finding"] == f])}
           for f in findings}
    out: dict[str, Any] = {
        "n": len(sel), "pointing_game": mean([r["hit"] for r in sel]),
        "pointing_game_macro": mean([v["pointing_game"] for v in per.values()]), "per_finding": per,
    }
    if any("hit_other" in r for r in sel):
        both = [r for r in sel if "hit_other" in r and not np.isnan(r["hit_other"])]
        out["pointing_game_other"] = mean([r["hit_other"] for r in both])
        out["pointing_gain"] = mean([r["hit"] - r["hit_other"] for r in both])
        for f in findings:
            fb = [r for r in both if r["finding"] == f]
            per[f]["pointing_gain"] = mean([r["hit"] - r["hit_other"] for r in fb])
    if lat:
        out["lateral"] = {
            "n": len(lat), "side_accuracy": mean([r["side_ok"] for r in lat]),
            "corr_mask": mean([r["corr_mask"] for r in lat]), "corr_mirror": mean([r["corr_mirror"] for r in lat]),
            "mask_beats_mirror": mean([float(r["corr_mask"] > r["corr_mirror"]) for r in lat
                                       if r["corr_mask"] == r["corr_mask"]]),
        }
        for key in ("no_side_side_ok", "opposite_side_ok", "no_side_hit", "opposite_hit"):
            vals = [r[key] for r in lat if key in r]
            if vals:
                out["lateral"][key.replace("_ok", "_accuracy")] = mean(vals)
    others = [r["corr_other_phrase"] for r in sel if "corr_other_phrase" in r]
    if others:
        out["corr_other_phrase"] = mean(others)
    return out


#: For the phrase-dependence figure: each large finding's map is compared with the map
#: of a phrase of a finding that sits elsewhere.
OTHER_PHRASE = {"pleural_effusion": "cardiomegaly", "pneumothorax": "cardiomegaly", "consolidation": "cardiomegaly",
                "edema": "pneumothorax", "cardiomegaly": "pneumothorax"}


def check_against_medvl_eval(model: Any, manifest: str | Path, data_cfg: dict[str, Any],
                             records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``medvl.eval.grounding.evaluate_grounding`` per method and compare its pointing game with ours.

    Returns:
        Per method ``{"medvl_eval", "ours", "n_medvl_eval", "n_ours"}`` over all findings
        (same masks, phrases and maps, computed two ways: they must agree).
    """
    from medvl.eval.grounding import evaluate_grounding

    out = {}
    for method, recs in records.items():
        res = evaluate_grounding(model, manifest, "test", data_cfg, method=method)
        out[method] = {"medvl_eval": res["pointing_game"], "ours": float(np.mean([r["hit"] for r in recs])),
                       "n_medvl_eval": res["n_cases"], "n_ours": len(recs)}
    return out

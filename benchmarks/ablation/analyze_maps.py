"""Why the pointing game comes out as it does: diagnostics of the ablation's heatmaps.

Loads the models the ablation saved (``<work>/seed<S>/<arm>/model``, plus the untrained
initialisation of each seed) and, for every annotated finding of the test split, the
phrase's token-grid map in both spaces the ablation scores (local heads, word query: the
map ``medvl.eval`` uses; global head, phrase embedding: ``grounding_extra``). Reports:

* ``top_position_share``: share of cases whose map peaks on the single most frequent grid
  cell (1/16 on a 4x4 grid if peaks were spread evenly; near 1 = a fixed position bias);
* ``cell_hit`` / ``cell_chance``: the peak *cell* overlaps the mask, against the mean share
  of cells that overlap it (a coarser pointing game that does not depend on where inside
  the cell the upsampled maximum lands);
* ``phrase_correlation``: mean Pearson correlation, on the same image, between the map of
  the annotated phrase and the map of another finding's phrase (near 1 = the map does not
  depend on the phrase, so it cannot ground anything);
* ``peak_changes_with_phrase``: share of cases where that other phrase moves the peak.

The maps are computed batched here; a self-check compares a few of them with
``medvl.eval.grounding.local_similarity``. Writes ``maps_analysis.json`` and
``maps_analysis.md`` next to this file. Run after ``run_ablation``::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ablation.analyze_maps
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def token_maps(model: Any, cases: list[Any], phrases: list[str]) -> dict[str, np.ndarray]:
    """``{"local": (n_cases, n_phrases, N), "global": (...)}`` cosine maps on the token grid."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.inference_mode():
        txt = model.embed_texts(phrases)
        g = F.normalize(txt.embeds.float(), dim=-1)  # (P, D)
        words = F.normalize(txt.local_embeds.float(), dim=-1)  # (P, W, D)
        wmask = txt.local_mask.float()  # (P, W)
        loc_all, glob_all = [], []
        for start in range(0, len(cases), 32):
            x = torch.from_numpy(np.stack([c.image for c in cases[start : start + 32]]))
            out = model.encode_image(x)
            n = int(np.prod(out.grid))
            loc = F.normalize(out.local_embeds[:, :n].float(), dim=-1)  # (B, N, D)
            # mean over each phrase's valid words of cos(token, word)
            s = torch.einsum("bnd,pwd->bpnw", loc, words)
            loc_all.append((s * wmask[None, :, None]).sum(-1) / wmask.sum(-1)[None, :, None])
            feats = model.image_encoder(x)
            tok = F.normalize(model.image_head(feats.tokens[:, :n]).float(), dim=-1)
            glob_all.append(torch.einsum("bnd,pd->bpn", tok, g))
    return {"local": torch.cat(loc_all).numpy(), "global": torch.cat(glob_all).numpy()}


def diagnostics(maps: np.ndarray, cases: list[Any], own: list[int], other: list[int], grid: tuple[int, int]) -> dict[str, float]:
    """The figures of the module docstring for one model and one space."""
    h, w = grid
    idx = np.arange(len(cases))
    m_own, m_other = maps[idx, own], maps[idx, other]  # (n, N)
    peak, peak_other = m_own.argmax(1), m_other.argmax(1)
    counts = collections.Counter(peak.tolist())
    cells = np.stack([c.mask.reshape(h, c.mask.shape[0] // h, w, c.mask.shape[1] // w).any(axis=(1, 3)).ravel()
                      for c in cases])  # (n, N) cell overlaps mask
    corr = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(m_own, m_other, strict=True) if a.std() > 0 and b.std() > 0]
    return {
        "top_position_share": counts.most_common(1)[0][1] / len(cases),
        "top_position": counts.most_common(1)[0][0],
        "distinct_peak_positions": len(counts),
        "cell_hit": float(cells[idx, peak].mean()),
        "cell_chance": float(cells.mean()),
        "phrase_correlation": float(np.mean(corr)) if corr else float("nan"),
        "peak_changes_with_phrase": float(np.mean(peak != peak_other)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ablation"))
    p.add_argument("--results-dir", default=str(HERE))
    args = p.parse_args(argv)
    import torch

    from benchmarks.ablation.grounding_extra import load_cases
    from benchmarks.ablation.run_ablation import base_config
    from medvl.eval.grounding import local_similarity
    from medvl.models import MedVLModel, build_model

    results_dir, work = Path(args.results_dir), Path(args.work)
    report = json.loads((results_dir / "results.json").read_text())
    s = report["settings"]
    cfg = base_config(argparse.Namespace(**s), work / "corpus" / "manifest.jsonl", work / "cache")
    cases = load_cases(cfg["data"]["manifest"], cfg["data"], "test")
    phrases = sorted({c.phrase for c in cases})
    findings = sorted({c.finding for c in cases})
    # the control phrase of a case: the next finding's first phrase (another finding, same wording style)
    first_phrase = {f: next(c.phrase for c in cases if c.finding == f) for f in findings}
    own = [phrases.index(c.phrase) for c in cases]
    other = [phrases.index(first_phrase[findings[(findings.index(c.finding) + 1) % len(findings)]]) for c in cases]
    grid = (s["image_size"] // 32, s["image_size"] // 32)

    rows: list[dict[str, Any]] = []
    for seed in s["seeds"]:
        models = []
        torch.manual_seed(seed)
        models.append(("untrained", build_model(cfg["model"])))  # same init as run_ablation
        for arm in report["arms"]:
            d = work / f"seed{seed}" / arm.replace("+", "_") / "model"
            if d.is_dir():
                models.append((arm, MedVLModel.from_pretrained(d)))
        for arm, model in models:
            maps = token_maps(model, cases, phrases)
            for k in (0, len(cases) // 2):  # self-check against medvl.eval's own map
                ref, _, _ = local_similarity(model, cases[k].image, cases[k].phrase, spatial_dims=2)
                if not np.allclose(ref.ravel(), maps["local"][k, own[k]], atol=1e-4):
                    raise SystemExit(f"batched map differs from medvl.eval's for {arm} seed {seed}")
            for space in ("local", "global"):
                rows.append({"arm": arm, "seed": seed, "space": space,
                             **diagnostics(maps[space], cases, own, other, grid)})
            print(rows[-2], rows[-1], flush=True)

    out = {"date_utc": report["date_utc"], "n_cases": len(cases), "grid": grid, "rows": rows}
    (results_dir / "maps_analysis.json").write_text(json.dumps(out, indent=2))
    keys = ["top_position_share", "distinct_peak_positions", "cell_hit", "cell_chance", "phrase_correlation",
            "peak_changes_with_phrase"]
    lines = ["# Heatmap diagnostics of the granularity ablation", "",
             (f"{len(cases)} annotated test findings, {grid[0]}x{grid[1]} token grid; models of the run of "
             f"{report['date_utc']} UTC (`results.md`). Mean over seeds {s['seeds']}. See `analyze_maps.py` for "
             "the definitions."), "",
             "| arm | space | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm in ["untrained", *report["arms"]]:
        for space in ("local", "global"):
            rs = [r for r in rows if r["arm"] == arm and r["space"] == space]
            if rs:
                lines.append(f"| {arm} | {space} | " + " | ".join(
                    f"{np.nanmean([r[k] for r in rs]):.3f}" for k in keys) + " |")
    lines += ["", "Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ablation.analyze_maps`."]
    (results_dir / "maps_analysis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where does a finding's word attend *inside its own report*, as the loss sees it?

``run_grounding`` scores maps of a short phrase ("left pleural effusion") encoded on its
own. Training never sees such a phrase: it sees the finding's word in the test study's
report ("There are moderate bilateral pleural effusions. ..."), contextualised by the
other words. This scores, for every annotated large finding of the test split and every
trained model left by ``run_grounding``, the maps the token terms themselves compute for
the finding's word(s) in the study's own report (as training reads it):

* ``word_cosine``: cosine of the word's local embedding with every image token's; MGCA's
  word-to-patch attention is a softmax of exactly this (temperature 0.1), so its peak is
  MGCA's attention peak;
* ``gloria_attention``: GLoRIA's word-to-region attention (softmax over the report's words
  per region, then over regions, ``medvl.losses.token_gloria.gloria_pair_scores``).

Scored like ``evaluate.py``: pointing game (upsampled as ``medvl.eval``), and the same peak
against the other test patients' masks of the same phrase (``pointing_gain`` = own -
other; ~0 for any map that does not use this image). Writes ``in_report.{json,md}``::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.grounding.in_report --work runs/grounding
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Word stems that state each large finding in the synthetic reports ("effusions",
#: "the heart is enlarged" / "enlarged heart" for cardiomegaly).
STEMS = {"pleural_effusion": ("effusion",), "pneumothorax": ("pneumothorax",), "consolidation": ("consolidation",),
         "cardiomegaly": ("cardiomegaly", "enlarged"), "edema": ("edema",)}
METHODS = ("word_cosine", "gloria_attention")


def report_texts(manifest: str, data_cfg: dict[str, Any], split: str = "test") -> dict[str, str]:
    """study id -> report text exactly as training reads it (the dataset's ``text``)."""
    from medvl.data import build_dataset

    ds = build_dataset(data_cfg, manifest, split)
    out = {}
    for i, row in enumerate(ds.rows):
        if any(a.get("mask") or a.get("box") for a in row.annotations):
            out[row.study_id] = ds[i]["text"]
    return out


def word_maps(model: Any, image: np.ndarray, text: str, stems: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Both maps (token grid) of the words of ``text`` that start with one of ``stems``; None if none does."""
    import torch
    import torch.nn.functional as F

    from medvl.losses.token_gloria import GloriaConfig, gloria_pair_scores

    with torch.inference_mode():
        img = model.encode_image(torch.from_numpy(image[None]).to(model.device))
        grid = tuple(int(g) for g in img.grid)
        n = int(np.prod(grid))
        regions = F.normalize(img.local_embeds[:, :n].float(), dim=-1)  # (1, N, D)
        txt = model.embed_texts([text])
        words = F.normalize(txt.local_embeds.float(), dim=-1)  # (1, T, D)
        valid = txt.local_mask.bool() if txt.local_mask is not None else torch.ones(words.shape[:2], dtype=torch.bool)
        names = txt.words[0] if txt.words else []
        idx = [i for i, w in enumerate(names) if i < words.shape[1] and bool(valid[0, i])
               and any(w.lower().startswith(s) for s in stems)]
        if not idx:
            return None
        cos = (words[0, idx] @ regions[0].T).mean(0)  # (N,)
        _, attn = gloria_pair_scores(words, valid, regions, torch.ones(1, n, dtype=torch.bool), GloriaConfig())
        gl = attn[0, 0, idx].mean(0)  # (N,)
    return {"word_cosine": cos.cpu().numpy().reshape(grid), "gloria_attention": gl.cpu().numpy().reshape(grid)}


def score_model(model: Any, images: np.ndarray, cases: list[Any], texts: dict[str, str]) -> dict[str, Any]:
    from benchmarks.grounding.evaluate import LARGE, SIDES, _corr, _peak_side, other_mask_hits, summarize
    from medvl.eval.grounding import pointing_game, upsample

    kept, recs, peaks = [], {m: [] for m in METHODS}, {m: [] for m in METHODS}
    missing = 0
    for c in cases:
        if c.finding not in LARGE:
            continue
        maps = word_maps(model, images[c.image_index], texts[c.study_id], STEMS[c.finding])
        if maps is None:
            missing += 1
            continue
        kept.append(c)
        for m in METHODS:
            heat = upsample(maps[m], c.mask.shape)
            peaks[m].append(heat >= heat.max())
            rec = {"finding": c.finding, "laterality": c.laterality, "hit": float(pointing_game(heat, c.mask))}
            if c.laterality in SIDES:
                rec |= {"side_ok": float(_peak_side(heat) == c.laterality), "corr_mask": _corr(heat, c.mask),
                        "corr_mirror": _corr(heat, c.mask[:, ::-1])}
            recs[m].append(rec)
    out: dict[str, Any] = {"n_cases": len(kept), "no_finding_word": missing}
    for m in METHODS:
        for r, h in zip(recs[m], other_mask_hits(peaks[m], kept), strict=True):
            r["hit_other"] = h
        out[m] = summarize(recs[m], LARGE)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--results-dir", default=str(HERE))
    p.add_argument("--image-size", type=int, default=256)
    args = p.parse_args(argv)
    from benchmarks.ablation.run_ablation import load_avg, machine
    from benchmarks.grounding.evaluate import LARGE, load_cases
    from medvl.atomic import write_text_atomic
    from medvl.models import MedVLModel

    work = Path(args.work)
    manifest = str(work / "corpus" / "manifest.jsonl")
    data = {"manifest": manifest, "dims": 2, "image_size": args.image_size, "augment": False,
            "cache_dir": str(work / "cache"), "max_words": 64}
    t0, load0 = time.perf_counter(), load_avg()
    images, cases = load_cases(manifest, data, "test")
    texts = report_texts(manifest, data)
    results = {}
    for model_dir in sorted(work.glob("runs/*/seed*/model")):
        name = f"{model_dir.parent.parent.name} {model_dir.parent.name}"
        results[name] = score_model(MedVLModel.from_pretrained(model_dir).eval(), images, cases, texts)
        print(name, {m: round(results[name][m]["pointing_game"], 3) for m in METHODS}, flush=True)
    report = {"benchmark": "grounding: the finding's word inside its own report", "machine": machine(),
              "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "load_1min": [load0, load_avg()],
              "seconds": round(time.perf_counter() - t0, 1), "stems": STEMS, "results": results,
              "command": "OMP_NUM_THREADS=1 python -m benchmarks.grounding.in_report " + " ".join(argv or sys.argv[1:])}
    write_text_atomic(Path(args.results_dir) / "in_report.json", json.dumps(report, indent=1, default=float))
    m = report["machine"]
    lines = ["# Grounding: the finding's word inside its own report (the maps the token terms train)", "",
             f"Run {report['date_utc']} UTC, {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, load "
             f"{report['load_1min']}; {report['seconds']} s. Command: `{report['command']}`. Models: "
             f"`run_grounding`'s, test split, large findings ({', '.join(LARGE)}). See the module docstring.", "",
             "| run | map | cases | pointing game | on other patients' masks | pointing gain (own - other) | "
             "side accuracy (lateral) | corr(map, mask) | corr(map, mirrored mask) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for meth in METHODS:
            s = r[meth]
            lat = s.get("lateral", {})
            lines.append(f"| {name} | {meth} | {s['n']} | {s['pointing_game']:.3f} | "
                         f"{s.get('pointing_game_other', float('nan')):.3f} | {s.get('pointing_gain', float('nan')):+.3f} "
                         f"| {lat.get('side_accuracy', float('nan')):.3f} | {lat.get('corr_mask', float('nan')):.3f} | "
                         f"{lat.get('corr_mirror', float('nan')):.3f} |")
    lines += ["", "Per finding (pointing game / gain):", ""]
    for name, r in results.items():
        for meth in METHODS:
            per = r[meth]["per_finding"]
            lines.append(f"- {name}, {meth}: " + ", ".join(
                f"{f} {per[f]['pointing_game']:.2f} / {per[f].get('pointing_gain', float('nan')):+.2f}" for f in LARGE))
    write_text_atomic(Path(args.results_dir) / "in_report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

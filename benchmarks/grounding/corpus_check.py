"""What the synthetic corpus offers a grounding model: is laterality in the image, in the text, in the masks?

Trains nothing. For the corpus of ``run_grounding`` (same settings), on the model inputs
and masks ``medvl.eval`` uses:

* **masks**: how much of the image each finding covers and how fixed its place is: the
  pointing game of the mean training mask (a map that ignores the image), per finding,
  and with the side taken from the phrase;
* **image**: for findings drawn on one side, the mean model-input intensity inside the
  mask against inside its mirror image (same rows, other side): if the finding is visible,
  the two differ in the direction the finding changes density, case after case;
* **text**: whether the report names the side of each lateral finding, and how often
  the finding's word occurs in a *negated* sentence ("No pleural effusion.") in reports
  of studies without it (the word a token term must ground is mostly said of images that
  do not show it).

Writes ``corpus_check.json`` and ``corpus_check.md`` next to this file::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -m benchmarks.grounding.corpus_check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Words that name each finding in the synthetic reports (after abbreviation expansion).
NAMES = {
    "pleural_effusion": r"effusion",
    "pneumothorax": r"pneumothorax|ptx",
    "consolidation": r"consolidation",
    "atelectasis": r"atelecta",
    "nodule": r"nodul",
    "edema": r"edema|congestion",
    "cardiomegaly": r"cardiomegaly|cardiac silhouette|heart",
}
NEGATION = re.compile(r"^\s*(no|without|there is no|negative for)\b", re.IGNORECASE)
#: Density change the finding draws: + denser (brighter), - less dense (darker).
DIRECTION = {"pleural_effusion": +1, "consolidation": +1, "atelectasis": +1, "nodule": +1, "pneumothorax": -1}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def side_words(sentence: str) -> set[str]:
    s = sentence.lower()
    out = set()
    if re.search(r"\bleft\b|\blingula", s):
        out.add("left")
    if re.search(r"\bright\b", s):
        out.add("right")
    if re.search(r"\bbilateral|\bboth\b", s):
        out.add("bilateral")
    return out


def text_check(rows: list[Any], max_words: int) -> dict[str, Any]:
    """Per finding: side named in the report's sentences about it; negated mentions elsewhere.

    The text is what training sees: the main sections, abbreviations expanded, cut at
    ``max_words`` (the experiment's ``data.max_words``).
    """
    from medvl.data.reports import prepare_report

    per: dict[str, dict[str, int]] = {}
    for row in rows:
        text = prepare_report(row.report, max_words=max_words)
        sents = sentences(text)
        present = {a["finding"]: a.get("laterality") for a in row.annotations}
        for finding, pattern in NAMES.items():
            about = [s for s in sents if re.search(pattern, s, re.IGNORECASE)]
            rec = per.setdefault(finding, {"studies_with": 0, "side_stated_right": 0, "side_stated_wrong": 0,
                                           "side_not_stated": 0, "studies_without": 0, "negated_mention": 0})
            if finding in present:
                rec["studies_with"] += 1
                lat = present[finding]
                if lat in ("left", "right"):
                    named = set().union(*(side_words(s) for s in about if not NEGATION.search(s))) if about else set()
                    if lat in named and len(named - {lat}) == 0:
                        rec["side_stated_right"] += 1
                    elif named - {lat}:
                        rec["side_stated_wrong"] += 1
                    else:
                        rec["side_not_stated"] += 1
            else:
                rec["studies_without"] += 1
                if any(NEGATION.search(s) for s in about):
                    rec["negated_mention"] += 1
    return per


def image_check(images: np.ndarray, cases: list[Any]) -> dict[str, Any]:
    """Per lateral finding: intensity inside the mask minus inside its mirror, on the model input."""
    per: dict[str, list[float]] = {}
    for c in cases:
        if c.laterality not in ("left", "right") or c.finding not in DIRECTION:
            continue
        img = images[c.image_index][0]
        mirror = c.mask[:, ::-1] & ~c.mask
        own = c.mask & ~c.mask[:, ::-1]
        if not mirror.any() or not own.any():
            continue
        per.setdefault(c.finding, []).append(float(img[own].mean() - img[mirror].mean()))
    out = {}
    for f, d in per.items():
        d_arr = np.asarray(d) * DIRECTION[f]
        out[f] = {"n": len(d), "mean_difference": float(np.mean(d)), "expected_sign": DIRECTION[f],
                  "share_with_expected_sign": float(np.mean(d_arr > 0))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--n-cxr", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=256)
    args = p.parse_args(argv)
    from benchmarks.ablation.run_ablation import make_corpus
    from benchmarks.grounding.evaluate import (
        LARGE,
        load_cases,
        prior_maps,
        score_priors,
        summarize,
    )
    from medvl.data.manifest import read_manifest

    manifest = make_corpus(Path(args.work), args.n_cxr, 0, 256)
    data = {"manifest": str(manifest), "dims": 2, "image_size": args.image_size, "cache_dir": str(Path(args.work) / "cache")}
    images, cases = load_cases(manifest, data, "test")
    priors = prior_maps(manifest, data, "train")
    refs = score_priors(cases, priors)
    findings = tuple(sorted({c.finding for c in cases}))
    masks = {f: {"n_test": sum(c.finding == f for c in cases),
                 "area": float(np.mean([c.mask.mean() for c in cases if c.finding == f])),
                 "sides": {s: sum(c.finding == f and c.laterality == s for c in cases)
                           for s in ("left", "right", "bilateral", None)}}
             for f in findings}
    res = {
        "corpus": {"n_cxr": args.n_cxr, "image_size": args.image_size, "test_annotations": len(cases)},
        "masks": masks,
        "pointing_of_priors": {k: summarize(v, findings) for k, v in refs.items()},
        "pointing_of_priors_large": {k: summarize(v, LARGE) for k, v in refs.items()},
        "image": image_check(images, cases),
        "text": text_check(read_manifest(manifest, split="train"), max_words=64),
    }
    (HERE / "corpus_check.json").write_text(json.dumps(res, indent=1, default=str))
    lines = ["# What the synthetic corpus offers a grounding model", "",
             (f"Corpus of `run_grounding` ({args.n_cxr} radiographs, model input {args.image_size} px); test split "
             f"masks on the model input, training split reports. Regenerate: "
             "`python -m benchmarks.grounding.corpus_check`."), "",
             "## Masks: pointing game of maps that never look at the image", "",
             "| finding | test n | mask area | chance | mean training mask | same, on the phrase's side |",
             "|---|---|---|---|---|---|"]
    for f in findings:
        pr = {k: res["pointing_of_priors"][k]["per_finding"].get(f, {}).get("pointing_game") for k in refs}
        lines.append(f"| {f} | {masks[f]['n_test']} | {masks[f]['area']:.3f} | {pr['chance']:.3f} | "
                     f"{pr['prior']:.3f} | {pr['side_prior']:.3f} |")
    large = res["pointing_of_priors_large"]
    lines += ["", (f"Large findings pooled: chance {large['chance']['pointing_game']:.3f}, mean training mask "
              f"{large['prior']['pointing_game']:.3f}, on the stated side {large['side_prior']['pointing_game']:.3f}."),
              "", "## Image: is the side visible? (model input, mask minus its mirror)", "",
              "| finding | n | mean intensity difference | expected sign | cases with the expected sign |", "|---|---|---|---|---|"]
    for f, v in res["image"].items():
        lines.append(f"| {f} | {v['n']} | {v['mean_difference']:+.3f} | {v['expected_sign']:+d} | "
                     f"{v['share_with_expected_sign']:.2f} |")
    lines += ["", "## Text: is the side stated? Is the word said of images without the finding?", "",
              "Training split reports as training sees them (main sections, abbreviations expanded, first 64 words).",
              "",
              ("| finding | train studies with it | side stated correctly | side wrong | side not stated | "
              "studies without it whose report negates it |"), "|---|---|---|---|---|---|"]
    for f, v in res["text"].items():
        lat = v["side_stated_right"] + v["side_stated_wrong"] + v["side_not_stated"]
        share = f"{v['side_stated_right']}/{lat}" if lat else "- (no side)"
        neg = v["negated_mention"] / max(1, v["studies_without"])
        lines.append(f"| {f} | {v['studies_with']} | {share} | {v['side_stated_wrong']} | {v['side_not_stated']} | "
                     f"{v['negated_mention']} of {v['studies_without']} ({neg:.0%}) |")
    (HERE / "corpus_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

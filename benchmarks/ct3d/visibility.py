"""Can a small model see the synthetic CT findings on the benchmark's grid?

Reads every generated CT back through the data room exactly as training does (the
real reader: NIfTI in RAS or LPS, DICOM series; lung window; 32 x 64 x 64 grid), brings
each finding's mask onto the same grid with ``ModelInputTransform.grid`` and reports,
per finding:

* the share of findings that keep at least one voxel on the grid, and the median
  number of voxels they cover;
* the contrast of the finding against the aerated lung around it: mean windowed value
  inside minus the mean of the voxels of a 2-voxel shell around the mask that look
  like aerated lung (-930..-450 HU, window values 0.28-0.60; the shell of a pleural
  finding also holds chest wall, which is not what a reader compares it with), in [0, 1]
  window units, and that contrast over the standard deviation of those lung voxels
  (the texture/noise a detector must beat);
* the AUROC on the test patients of a logistic regression on pooled voxels (mean-,
  max- and min-pooled 8 x 16 x 16 grids), fit on train + val: a floor for what a
  learned image tower can do (a nodule anywhere in the lung is not a linear feature
  of mean-pooled voxels, as on the radiographs; the max/min pools help).

Writes ``visibility.json`` and ``visibility.md`` next to this file::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ct3d.visibility
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ct3d.common import HERE, IMAGE_SIZE, REPO, data_section, load_avg, machine, make_corpus

#: Window values (lung window, -1350..150 HU) of aerated lung: -930..-450 HU.
LUNG = (0.28, 0.60)
FINDINGS = ("nodule", "consolidation", "pleural_effusion", "pneumothorax", "atelectasis")


def _pools(x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x)[None]  # (1, 1, D, H, W)
    out = [F.adaptive_avg_pool3d(t, (8, 16, 16)), F.adaptive_max_pool3d(t, (8, 16, 16)),
           -F.adaptive_max_pool3d(-t, (8, 16, 16))]
    return torch.cat([o.flatten() for o in out]).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "ct3d_bench"))
    p.add_argument("--n-ct", type=int, default=600)
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--results-dir", default=str(HERE))
    args = p.parse_args(argv)

    from scipy.ndimage import binary_dilation
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from medvl.config import from_dict
    from medvl.data import build_dataset
    from medvl.data.config import DataConfig
    from medvl.data.manifest import resolve_path
    from medvl.data.transforms import ModelInputTransform
    from medvl.io import read_image

    t_start = time.perf_counter()
    work = Path(args.work)
    manifest = make_corpus(work, args.n_ct, args.corpus_seed)
    data = data_section(manifest, work / "cache", 8)
    transform = ModelInputTransform(from_dict(DataConfig, data, where="data"))
    feats: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[dict[str, int]]] = {}
    per_finding: dict[str, dict[str, list[float]]] = {f: {"voxels": [], "contrast": [], "lung_sd": []}
                                                     for f in FINDINGS}
    for split in ("train", "val", "test"):
        ds = build_dataset(data, manifest, split)
        feats[split], labels[split] = [], []
        for i in range(len(ds)):
            item = ds[i]
            row = ds.rows[i]
            x = item["image"].numpy()  # (1, D, H, W) in [0, 1]
            feats[split].append(_pools(x))
            labels[split].append(dict(row.labels))
            for ann in row.annotations:
                if ann.get("uncertain") or ann["finding"] not in per_finding:
                    continue
                m = read_image(resolve_path(manifest, ann["mask"]))
                g = transform.grid(m.array[None].astype(np.float32), m.spacing)[0] > 0.5
                rec = per_finding[ann["finding"]]
                rec["voxels"].append(float(g.sum()))
                shell = binary_dilation(g, iterations=2) & ~g
                lung = shell & (x[0] >= LUNG[0]) & (x[0] <= LUNG[1])
                if g.any() and lung.sum() >= 5:
                    rec["contrast"].append(float(x[0][g].mean() - x[0][lung].mean()))
                    rec["lung_sd"].append(float(x[0][lung].std()))
    train_x = np.stack(feats["train"] + feats["val"])
    test_x = np.stack(feats["test"])
    scaler = StandardScaler().fit(train_x)
    report: dict[str, Any] = {
        "benchmark": "synthetic CT visibility on the model grid",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "load_average_1min": load_avg(),
        "command": "python -m benchmarks.ct3d.visibility " + " ".join(argv or []),
        "grid_DHW": IMAGE_SIZE, "window": "lung (-600 +/- 750 HU)",
        "n": {s: len(v) for s, v in feats.items()}, "findings": {},
    }
    for f in FINDINGS:
        def lab(rows: list[dict[str, int]]) -> np.ndarray:
            return np.array([r.get(f, 0) for r in rows])  # noqa: B023

        ytr, yte = lab(labels["train"] + labels["val"]), lab(labels["test"])
        keep_tr, keep_te = ytr >= 0, yte >= 0  # hedged (-1) left out, as eval's U-Ignore
        auc = None
        if len(set(yte[keep_te].tolist())) == 2:
            clf = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(train_x[keep_tr]), ytr[keep_tr])
            auc = float(roc_auc_score(yte[keep_te], clf.decision_function(scaler.transform(test_x[keep_te]))))
        rec = per_finding[f]
        vox = np.array(rec["voxels"])
        report["findings"][f] = {
            "n_annotated": len(vox),
            "share_visible_on_grid": float((vox > 0).mean()) if len(vox) else None,
            "median_voxels": float(np.median(vox)) if len(vox) else None,
            "p10_voxels": float(np.percentile(vox, 10)) if len(vox) else None,
            "median_contrast": float(np.median(rec["contrast"])) if rec["contrast"] else None,
            "n_with_lung_shell": len(rec["contrast"]),
            "median_abs_contrast_over_lung_sd": float(np.median(np.abs(rec["contrast"]) / np.maximum(
                rec["lung_sd"], 1e-6))) if rec["contrast"] else None,
            "test_positives": int((yte == 1).sum()), "test_negatives": int((yte == 0).sum()),
            "linear_probe_auroc": auc,
        }
    aucs = [v["linear_probe_auroc"] for v in report["findings"].values() if v["linear_probe_auroc"] is not None]
    report["linear_probe_mean_auroc"] = float(np.mean(aucs)) if aucs else None
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.results_dir)
    (out / "visibility.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Synthetic CT findings on the benchmark grid",
        "",
        f"Run {report['date_utc']} UTC, {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
        f"load {report['load_average_1min']}; {report['seconds']} s. Grid D x H x W = {IMAGE_SIZE}, lung window; "
        f"studies train+val {len(train_x)}, test {len(test_x)}. Contrast: mean windowed value in the mask minus "
        "the mean of the aerated-lung voxels (-930..-450 HU) of a 2-voxel shell around it, in window units [0, 1]; "
        "'x lung sd' divides it by those voxels' standard deviation. Probe: logistic regression on "
        "mean/max/min-pooled 8x16x16 grids, test patients, hedged labels left out.",
        "",
        "| finding | annotated | on grid | median voxels (p10) | median contrast vs lung | x lung sd "
        "| probe AUROC (test +/-) |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, v in report["findings"].items():
        auc = "n/a" if v["linear_probe_auroc"] is None else f"{v['linear_probe_auroc']:.3f}"
        lines.append(
            f"| {f} | {v['n_annotated']} | {v['share_visible_on_grid']:.2f} | {v['median_voxels']:.0f} "
            f"({v['p10_voxels']:.0f}) | {v['median_contrast']:+.3f} | {v['median_abs_contrast_over_lung_sd']:.1f} "
            f"| {auc} ({v['test_positives']}/{v['test_negatives']}) |")
    lines += ["", f"Mean probe AUROC {report['linear_probe_mean_auroc']:.3f} (chance 0.5).", "",
              "Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ct3d.visibility`."]
    (out / "visibility.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

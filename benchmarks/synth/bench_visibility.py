"""Are the synthetic findings visible after downsampling? A pixel linear probe per finding.

Generates a small corpus, reads every radiograph back the way a careful loader does
(pydicom modality LUT, MONOCHROME1 inversion, the file's first window, pooled to
``--probe-size`` pixels), trains one logistic regression per finding on the train
split and reports test AUROC (scikit-learn). A linear model on raw pixels is a weak
learner (a nodule can be anywhere), so these figures are a floor for what a small CNN
reaches. The baseline, in the same process, is the naive loader
``pixel_array / pixel_array.max()`` that ignores rescale and photometric
interpretation: its AUROCs show that those tags matter in this corpus. A tiny CNN
with global max pooling (position-free, a few CPU epochs, like the demo's encoder)
is trained on the careful images at ``--cnn-size`` as a second probe, and a
Laplacian-of-Gaussian blob detector scores nodules (small, anywhere in the lungs).

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.synth.bench_visibility [--n-cxr 600] [--image-size 256]

Writes ``benchmarks/synth/visibility.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _pool(a: np.ndarray, size: int) -> np.ndarray:
    """Block mean to ``size`` x ``size`` (area resize when the size does not divide)."""
    if a.shape[0] % size or a.shape[1] % size:
        from PIL import Image

        return np.asarray(Image.fromarray(a.astype(np.float32)).resize((size, size), Image.BOX))
    k = a.shape[0] // size
    return a.reshape(size, k, size, k).mean(axis=(1, 3))


def load_careful(path: Path, size: int) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0).astype(np.float32)
    shown = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-6)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    return _pool(shown, size)


def load_naive(path: Path, size: int) -> np.ndarray:
    import pydicom

    arr = pydicom.dcmread(path).pixel_array.astype(np.float32)
    return _pool(arr / arr.max(), size)


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float | None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    test = ~train
    if len(set(y[train])) < 2 or len(set(y[test])) < 2:
        return None
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(x[train]), y[train])
    return float(roc_auc_score(y[test], clf.decision_function(scaler.transform(x[test]))))


def cnn_probe(images: np.ndarray, labels: np.ndarray, train: np.ndarray, epochs: int, seed: int) -> list[float | None]:
    """Test AUROC per label column of a tiny multi-label CNN (global max pooling, so position-free)."""
    import torch
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    x = torch.from_numpy(images[:, None].astype(np.float32))
    x = (x - x[torch.from_numpy(train)].mean()) / x[torch.from_numpy(train)].std()
    y = torch.from_numpy(labels.astype(np.float32))
    k = labels.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, k),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    tr = np.flatnonzero(train)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(tr), max(1, len(tr) // 32)):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = net(x[torch.from_numpy(~train)]).numpy()
    yt = labels[~train]
    return [float(roc_auc_score(yt[:, j], scores[:, j])) if len(set(yt[:, j])) == 2 else None for j in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cxr", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--probe-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn-size", type=int, default=128, help="input size of the tiny CNN probe (0: skip it)")
    parser.add_argument("--cnn-epochs", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).with_name("visibility.json")))
    args = parser.parse_args()

    from medvl.data.manifest import read_manifest, resolve_path
    from medvl.data.synth import generate_corpus
    from medvl.findings import finding_names

    tmp = Path(tempfile.mkdtemp(prefix="bench_vis_"))
    try:
        t0 = time.perf_counter()
        manifest = generate_corpus(tmp, n_cxr=args.n_cxr, n_ct=0, seed=args.seed, image_size=args.image_size)
        gen_s = time.perf_counter() - t0
        rows = read_manifest(manifest)
        paths = [resolve_path(manifest, r.image) for r in rows]
        careful = np.stack([load_careful(p, args.probe_size).ravel() for p in paths])
        naive = np.stack([load_naive(p, args.probe_size).ravel() for p in paths])
        cnn_images = np.stack([load_careful(p, args.cnn_size) for p in paths]) if args.cnn_size else None
        blob_images = cnn_images if args.cnn_size == 128 else np.stack([load_careful(p, 128) for p in paths])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Train on train+val, test on test: the corpus is small.
    train = np.array([r.split != "test" for r in rows])
    result: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "settings": vars(args), "generation_s": round(gen_s, 1), "n_test": int((~train).sum()),
        "auroc": {},
    }
    for name in finding_names("CR"):
        y = np.array([1 if r.labels.get(name) == 1 else 0 for r in rows])
        a, b = probe(careful, y, train), probe(naive, y, train)
        result["auroc"][name] = {  # type: ignore[index]
            "positives": int(y.sum()),
            "careful_loader": None if a is None else round(a, 3),
            "naive_loader_baseline": None if b is None else round(b, 3),
        }
    if cnn_images is not None:
        names = finding_names("CR")
        y = np.array([[1 if r.labels.get(n) == 1 else 0 for n in names] for r in rows])
        t0 = time.perf_counter()
        aucs = cnn_probe(cnn_images, y, train, args.cnn_epochs, args.seed)
        result["cnn_train_s"] = round(time.perf_counter() - t0, 1)
        for n, a in zip(names, aucs, strict=True):
            result["auroc"][n]["tiny_cnn"] = None if a is None else round(a, 3)  # type: ignore[index]
        result["mean_auroc_tiny_cnn"] = round(float(np.mean([a for a in aucs if a is not None])), 3)
    # Nodules are small and anywhere: a hand-made blob detector (largest Laplacian-of-
    # Gaussian response over the chest at 128 px) shows whether the signal is there.
    from scipy.ndimage import gaussian_laplace
    from sklearn.metrics import roc_auc_score

    y_nod = np.array([1 if r.labels.get("nodule") == 1 else 0 for r in rows])
    blob = np.array([float((-gaussian_laplace(im, 3.0))[20:100, 15:113].max()) for im in blob_images])
    result["nodule_log_blob_detector_auroc"] = round(float(roc_auc_score(y_nod, blob)), 3)
    vals = [v["careful_loader"] for v in result["auroc"].values() if v["careful_loader"] is not None]  # type: ignore[union-attr]
    base = [v["naive_loader_baseline"] for v in result["auroc"].values() if v["naive_loader_baseline"] is not None]  # type: ignore[union-attr]
    result["mean_auroc_careful"] = round(float(np.mean(vals)), 3)
    result["mean_auroc_naive_baseline"] = round(float(np.mean(base)), 3)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

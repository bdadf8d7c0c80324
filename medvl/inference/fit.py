"""End of training: fit what makes a model directory trustworthy on its own.

:func:`fit_model_dir` runs once, on the saved best model, and writes:

* ``calibration.json``: Platt scaling per finding of the directory's zero-shot rule,
  fitted on the validation split (``medvl.inference.calibration``);
* ``training_profile.json`` + ``ood_reference.safetensors``: what the model was trained
  on, the embedding reference and the image-feature reference with their thresholds
  (``medvl.inference.ood``).

Everything goes through :func:`medvl.load` on the directory just written, so the
calibration and the reference are computed with exactly the preprocessing and scoring
that inference will use.
"""

from __future__ import annotations

import logging
from collections import Counter
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.config import DataConfig

log = logging.getLogger(__name__)

#: training studies embedded as the OOD reference (the first ones in manifest order)
MAX_REFERENCE = 2048
#: training images read for the header facts of the profile (seeded sample)
MAX_HEADER_SAMPLE = 128


def fit_model_dir(
    model_dir: str | PathLike[str],
    data_cfg: DataConfig,
    manifest: str | PathLike[str],
    *,
    seed: int = 0,
    max_reference: int = MAX_REFERENCE,
    max_header_sample: int = MAX_HEADER_SAMPLE,
    progress: bool = False,
) -> dict[str, Any]:
    """Write calibration, training profile and OOD reference into a trained model directory.

    Args:
        model_dir: the saved model (with ``preprocessing.json``).
        data_cfg: the data section it was trained with (batching, cache and workers are reused).
        manifest: the training manifest (train split: profile and reference; val split:
            calibration and the reference threshold).
        seed: seed of the header sample.
        max_reference: training studies embedded as the reference.
        max_header_sample: training images read for modality, body part, photometric and spacing.
        progress: show progress bars.

    Returns:
        a summary for the log: calibrated findings, threshold, validation flag rate.
    """
    from medvl.data.manifest import read_manifest
    from medvl.inference.embedding import embed_split
    from medvl.inference.ood import TrainingProfile
    from medvl.inference.pipeline import load

    pipe = load(model_dir, data=data_cfg)
    rows = [r for r in read_manifest(manifest, split="train") if r.dims == data_cfg.dims]
    profile = TrainingProfile(n_studies=len(rows), dims=data_cfg.dims,
                              modalities=dict(Counter(str(r.modality).upper() for r in rows)))
    _header_facts(pipe, profile, rows, manifest, max_header_sample, seed)
    profile.vocabulary = _vocabulary(rows, pipe.data_config)
    pipe.profile = profile  # the prompt set follows the trained modalities

    cfg = pipe.data_config
    val = embed_split(pipe.model, manifest, "val", cfg, with_text=False, progress=progress, with_features=True)
    train = embed_split(pipe.model, manifest, "train", cfg, with_text=False, progress=progress,
                        max_studies=max_reference, with_features=True)
    summary: dict[str, Any] = {"n_validation": len(val), "n_reference": len(train)}
    _embedding_reference(profile, train.image, val.image, summary)
    _feature_reference(profile, train.features, val.features, summary)
    profile.save(model_dir, reference=train.image if len(train) else None,
                 features=train.features if profile.features else None)

    if len(val):
        cal = _calibration(pipe, val)
        cal.save(model_dir)
        summary["calibrated"] = sorted(cal.findings)
        summary["uncalibrated"] = dict(cal.uncalibrated)
    else:
        summary["calibrated"] = []
        summary["uncalibrated"] = {"*": "the val split is empty"}
        (Path(model_dir) / "calibration.json").unlink(missing_ok=True)
    return summary


def _header_facts(pipe: Any, profile: Any, rows: list[Any], manifest: Any, n: int, seed: int) -> None:
    """Modality, body part, photometric kind, spacing and size of a seeded sample of training images."""
    from medvl.data.manifest import resolve_path
    from medvl.errors import MedvlError
    from medvl.inference.ood import body_part, declared_modality, header_spacing, photometric_kind, physical_extent

    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    parts: Counter[str] = Counter()
    photometric: Counter[str] = Counter()
    spacings: list[float] = []
    extents: list[float] = []
    read = 0
    for i in order:
        try:
            img = pipe.read(resolve_path(manifest, rows[int(i)].image))
        except (MedvlError, OSError) as exc:  # an unreadable study is left out, as training left it out
            log.info("profile: skipped a training image (%s)", type(exc).__name__)
            continue
        read += 1
        mod = declared_modality(img)
        if mod and mod not in profile.modalities:  # what the files declare, next to the manifest's counts
            profile.modalities[mod] = 0
        if body_part(img):
            parts[body_part(img)] += 1
        photometric[photometric_kind(img)] += 1
        sp = header_spacing(img)
        if sp is not None:
            spacings.append(sp)
        size = physical_extent(img)
        if size is not None:
            extents.append(size)
    profile.n_sampled = read
    profile.body_parts = dict(parts)
    profile.photometric = dict(photometric)
    profile.spacing_mm = [float(min(spacings)), float(max(spacings))] if spacings else None
    profile.extent_mm = [float(min(extents)), float(max(extents))] if extents else None


def _vocabulary(rows: list[Any], cfg: DataConfig) -> list[str]:
    from medvl.data.text import prepare_text
    from medvl.errors import ReportError
    from medvl.inference.ood import report_vocabulary

    texts = []
    rng = np.random.default_rng(0)
    for r in rows:
        try:
            texts.append(prepare_text(r.report, cfg, rng, sample=False))
        except ReportError:
            continue
    return report_vocabulary(texts)


def _embedding_reference(profile: Any, reference: np.ndarray, val: np.ndarray, summary: dict[str, Any]) -> None:
    """The threshold: the :data:`~medvl.inference.ood.VAL_QUANTILE` quantile of validation similarities."""
    from medvl.inference.ood import K_NEIGHBOURS, VAL_QUANTILE, neighbour_similarity

    if not len(reference):
        profile.embedding = None
        return
    if len(val):
        sims = neighbour_similarity(val, reference, K_NEIGHBOURS)
        source = "validation"
    else:  # no held-out split: leave-one-out on the reference (optimistic; recorded as such)
        sims = neighbour_similarity(reference, reference, K_NEIGHBOURS, exclude_self=True)
        source = "training (leave-one-out)"
    threshold = float(np.quantile(sims, VAL_QUANTILE))
    profile.embedding = {"k": K_NEIGHBOURS, "threshold": threshold, "quantile": VAL_QUANTILE,
                         "n_reference": len(reference), "n_validation": len(sims),
                         "threshold_from": source,
                         "validation_flag_rate": float(np.mean(sims < threshold))}
    summary["ood_threshold"] = threshold
    summary["validation_flag_rate"] = profile.embedding["validation_flag_rate"]


def _feature_reference(profile: Any, reference: np.ndarray | None, val: np.ndarray | None,
                       summary: dict[str, Any]) -> None:
    """The image-feature check's threshold: the distance 99 % of validation images stay under."""
    from medvl.inference.ood import VAL_QUANTILE, FeatureModel

    profile.features = None
    if reference is None or len(reference) < 2:
        return
    fm = FeatureModel(reference)
    if val is not None and len(val):
        dist, source = fm.distance(val), "validation"
    else:  # no held-out split: the reference itself (optimistic; recorded as such)
        dist, source = fm.distance(reference), "training"
    threshold = float(np.quantile(dist, 1 - VAL_QUANTILE))
    profile.features = {"threshold": threshold, "quantile": VAL_QUANTILE, "shrinkage": fm.shrinkage,
                        "dim": int(reference.shape[1]), "n_reference": len(reference), "n_validation": len(dist),
                        "threshold_from": source, "validation_flag_rate": float(np.mean(dist > threshold))}
    summary["feature_threshold"] = threshold


def _calibration(pipe: Any, val: Any) -> Any:
    from medvl.findings import finding_names
    from medvl.inference.calibration import fit_calibration

    ps = pipe.prompt_set()
    names, logits, scores = pipe.zeroshot(val.image, ps)
    columns = finding_names()
    labels = np.full((len(val), len(names)), np.nan)
    for j, f in enumerate(names):
        if f in columns:
            labels[:, j] = val.labels[:, columns.index(f)]
    cal = fit_calibration(logits, scores, labels, names, scoring=pipe.rule.scoring, ensemble=pipe.rule.ensemble,
                          prompt_set=ps.name, split="val")
    for f in names:
        if f not in columns:
            cal.uncalibrated[f] = "no labels for this finding in the manifest"
    return cal

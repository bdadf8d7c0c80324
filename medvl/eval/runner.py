"""``evaluate``: run the chosen tasks on one split and write ``results.json``, tables and plots."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.atomic import write_text_atomic
from medvl.config import from_dict, to_dict
from medvl.errors import ConfigError, ManifestError
from medvl.eval.config import EvalConfig
from medvl.eval.embed import Embeddings, embed_split, embed_texts
from medvl.findings import finding_names
from medvl.inference.zeroshot import model_logit_scale

if TYPE_CHECKING:
    from medvl.data.config import DataConfig

__all__ = ["evaluate", "model_logit_scale"]


def _jsonable(obj: Any) -> Any:
    """Replace numpy scalars and NaN (not valid JSON) so results.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _modality(manifest_path: str | Path, study_ids: list[str]) -> str:
    from medvl.data.manifest import read_manifest

    ids = set(study_ids)
    counts = Counter(r.modality for r in read_manifest(manifest_path) if r.study_id in ids)
    if not counts:
        raise ManifestError("no evaluated study found in the manifest", path=manifest_path)
    return counts.most_common(1)[0][0]


def _zeroshot(model: Any, emb: Embeddings, manifest_path: str | Path, cfg: EvalConfig,
              pipe: Any = None) -> dict[str, Any]:
    from medvl.eval.zeroshot import evaluate_zeroshot
    from medvl.inference.prompts import load_prompt_set, prompt_set_for_modality

    modality = _modality(manifest_path, emb.study_ids)
    if cfg.prompts != "auto":
        ps = load_prompt_set(cfg.prompts)
    elif pipe is not None:
        ps = pipe.prompt_set(modality=modality)  # the model directory's choice, as classify makes it
    else:
        ps = prompt_set_for_modality(modality)
    if pipe is not None:
        names, pos_list, neg_list = pipe.prompt_embeddings(ps)  # prepared as training texts, cached
        pos, neg = dict(zip(names, pos_list, strict=True)), dict(zip(names, neg_list, strict=True))
    else:
        pos = {f: embed_texts(model, p) for f, p in ps.positive.items()}
        neg = {f: embed_texts(model, p) for f, p in ps.negative.items()}
    from medvl.inference.zeroshot import ZeroShotRule, model_logit_bias

    rule = pipe.rule if pipe is not None else ZeroShotRule.from_config(getattr(model, "zeroshot", None))
    scoring = rule.scoring if cfg.scoring == "auto" else cfg.scoring
    ensemble = rule.ensemble if cfg.ensemble == "auto" else cfg.ensemble
    res = evaluate_zeroshot(
        emb.image, emb.labels, finding_names(), pos, neg,
        logit_scale=model_logit_scale(model), logit_bias=model_logit_bias(model), scoring=scoring,
        ensemble=ensemble,
        n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, multiclass=cfg.multiclass,
        multiclass_per_class=cfg.multiclass_per_class, uncertain=cfg.uncertain, confidence=cfg.confidence,
    )
    res["prompt_set"] = ps.name
    if pipe is not None:
        from medvl.eval.calibration import calibration_report

        res["calibration"] = calibration_report(pipe, emb, ps, scoring, ensemble)
    return res


def _class_retrieval(emb: Embeddings, cfg: EvalConfig) -> dict[str, Any]:
    """P@K by class on the 5x200-style subset (same classes and balancing as multi-class zero-shot)."""
    from medvl.eval.retrieval import class_retrieval
    from medvl.eval.zeroshot import CHEXPERT_5, balanced_sample, multiclass_subset

    names = finding_names()
    classes = list(cfg.multiclass) if cfg.multiclass else [f for f in CHEXPERT_5 if f in names]
    present = [f for f in classes if f in names and np.any(emb.labels[:, names.index(f)] == 1)]
    if len(present) < 2:
        return {"classes": present, "n": 0, "note": "fewer than two classes with positive studies"}
    rows, targets = multiclass_subset(emb.labels, [names.index(f) for f in present])
    keep = balanced_sample(targets, cfg.multiclass_per_class, cfg.seed)
    rows, targets = rows[keep], targets[keep]
    if len(rows) < 2:
        return {"classes": present, "n": len(rows), "note": "too few single-label studies"}
    return class_retrieval(emb.image[rows], emb.text[rows], [emb.texts[i] for i in rows], targets, present,
                           cfg.retrieval_ks)


def evaluate(
    model: Any,
    manifest_path: str | Path,
    *,
    tasks: list[str] | tuple[str, ...] | str,
    out_dir: str | Path,
    data_cfg: DataConfig | dict[str, Any] | None = None,
    split: str = "test",
    config: EvalConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a model on one split of a manifest and write the report.

    Args:
        model: a :class:`medvl.inference.Pipeline` (``medvl.load(dir)``: the model directory's
            own preprocessing, prompt embeddings, calibration and heatmap method), or a bare
            ``MedVLModel`` (anything with ``encode_image`` / ``embed_texts``) evaluated with
            ``data_cfg`` as given.
        manifest_path: the manifest (JSONL).
        tasks: some of ``zeroshot``, ``retrieval``, ``grounding``, ``probe`` (list or
            comma-separated string).
        out_dir: where ``results.json``, ``results.md`` and the plots go.
        data_cfg: the ``data`` section used to build the loader (as in training). With a
            pipeline, ``None`` uses its own; explicit settings must agree with its
            preprocessing (:class:`ConfigError` naming the field otherwise).
        split: the split evaluated; the probe trains on ``train`` and the hubness
            query bank comes from ``train`` when it has studies.
        config: the ``eval`` section (dataclass or mapping); ``tasks`` overrides its tasks.

    Returns:
        the results as written to ``results.json``.

    Raises:
        ConfigError: unknown task or bad eval setting.
        ManifestError: the split has no readable study.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    cfg = config if isinstance(config, EvalConfig) else from_dict(EvalConfig, dict(config or {}), where="eval")
    cfg = dataclasses.replace(cfg, tasks=list(tasks))
    cfg.validate()
    if not cfg.tasks:
        raise ConfigError("no task given", field="eval.tasks", expected="some of zeroshot,retrieval,grounding,probe")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from medvl.inference.pipeline import Pipeline

    pipe = model if isinstance(model, Pipeline) else None
    if pipe is not None:
        data_cfg = pipe.data_config if data_cfg is None else pipe.preprocessing.apply_to(data_cfg)
        model = pipe.model
    if hasattr(model, "eval"):
        model.eval()

    need_text = "retrieval" in cfg.tasks
    emb = embed_split(model, manifest_path, split, data_cfg, with_text=need_text, progress=cfg.progress)
    if len(emb) == 0:
        dims = (data_cfg or {}).get("dims", 2) if isinstance(data_cfg, dict) else getattr(data_cfg, "dims", 2)
        raise ManifestError(f"split {split!r} has no readable study with dims {dims}", path=manifest_path,
                            field="split", expected="studies of that split and data.dims (see skipped records)")
    results: dict[str, Any] = {
        "split": split,
        "n_studies": len(emb),
        "tasks": cfg.tasks,
        "skipped": emb.skipped,
        "config": to_dict(cfg),
    }
    if pipe is not None:
        results["model_id"] = pipe.model_id
    train_emb: Embeddings | None = None
    probe = "probe" in cfg.tasks and split != "train"
    bank_only = not probe
    if probe or ("retrieval" in cfg.tasks and cfg.hubness != "none" and split != "train"):
        # The probe needs the whole train split; a hubness query bank only a sample of it.
        train_emb = embed_split(model, manifest_path, "train", data_cfg, with_text=need_text, progress=cfg.progress,
                                max_studies=cfg.hubness_bank_size if bank_only else None)
        if len(train_emb) == 0:
            train_emb = None

    plots: dict[str, str] = {}
    zs_scores = None
    if "zeroshot" in cfg.tasks:
        zs = _zeroshot(model, emb, manifest_path, cfg, pipe)
        zs_scores = zs.pop("scores")
        results["zeroshot"] = zs
    if "retrieval" in cfg.tasks:
        from medvl.eval.retrieval import evaluate_retrieval

        results["retrieval"] = evaluate_retrieval(
            emb.image, emb.text, emb.texts, emb.labels, ks=cfg.retrieval_ks, hubness=cfg.hubness,
            hubness_beta=cfg.hubness_beta,
            bank_image=train_emb.image if train_emb is not None else None,
            bank_text=train_emb.text if train_emb is not None and train_emb.text.size else None,
        )
        results["retrieval"]["by_class"] = _class_retrieval(emb, cfg)
    if "probe" in cfg.tasks:
        from medvl.eval.probe import linear_probe

        if split == "train":
            results["probe"] = {"error": "the probe is fit on the train split; evaluate val or test", "fractions": {}}
        elif train_emb is None:
            results["probe"] = {"error": "the train split has no readable study", "fractions": {}}
        else:
            results["probe"] = {
                "n_train_studies": len(train_emb),
                "fractions": linear_probe(
                    train_emb.image, train_emb.labels, emb.image, emb.labels, finding_names(),
                    fractions=cfg.probe_fractions, seed=cfg.seed, max_iter=cfg.probe_max_iter,
                    uncertain=cfg.uncertain,
                ),
            }
    if "grounding" in cfg.tasks:
        from medvl.eval.grounding import evaluate_grounding
        from medvl.inference.heatmap import choose_method

        # A pipeline knows whether its local heads were trained; a bare model is taken at its word.
        method, why = choose_method(pipe.training, "auto") if pipe is not None else ("local", "bare model")
        results["grounding"] = evaluate_grounding(
            model, manifest_path, split, data_cfg, threshold=cfg.grounding_threshold,
            out_dir=out if cfg.plots else None, method=method or "cam",
        )
        results["grounding"]["method_reason"] = why

    if cfg.plots:
        from medvl.eval.plots import plot_probe, plot_recall_curves, plot_roc

        if zs_scores is not None:
            names = results["zeroshot"]["findings"]
            cols = [finding_names().index(f) for f in names]
            p = plot_roc(emb.labels[:, cols], zs_scores, names, out / "roc_zeroshot.png", "zero-shot ROC")
            if p:
                plots["roc_zeroshot"] = p.name
        if "retrieval" in results:
            plots["recall_at_k"] = plot_recall_curves(results["retrieval"], out / "recall_at_k.png").name
        if "probe" in results:
            p = plot_probe(_jsonable(results["probe"]), out / "probe.png")
            if p:
                plots["probe"] = p.name
    results["plots"] = plots

    from medvl.eval.plots import write_report

    clean = _jsonable(results)
    write_text_atomic(out / "results.json", json.dumps(clean, indent=2, allow_nan=False))
    write_report(clean, out)
    from medvl.runinfo import write_run_info

    data_section = data_cfg if isinstance(data_cfg, dict) or data_cfg is None else to_dict(data_cfg)

    write_run_info(out, {"data": data_section or {}, "eval": to_dict(cfg)}, cfg.seed,
                   f"medvl.eval.evaluate(split={split!r}, tasks={cfg.tasks})")
    return clean

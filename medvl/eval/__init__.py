"""medvl.eval: zero-shot classification, retrieval, grounding and linear probe.

Public API (imported lazily so ``import medvl.eval`` stays cheap):

* :func:`evaluate` (``medvl.eval.runner``): run tasks on a split, write ``results.json``,
  ``results.md`` and plots.
* :mod:`medvl.eval.metrics`: pure metric functions (AUROC, bootstrap CIs, ranks, R@K, P@K).
* :func:`phrase_heatmap` (``medvl.inference.heatmap``, re-exported): the ``local`` heatmap of a
  phrase over a model input; ``medvl.load(dir).heatmap`` picks the method the model supports.
* zero-shot scores of one image: ``medvl.load(model_dir).classify(path)`` (``medvl.inference``).
* :func:`load_prompt_set` (``medvl.inference.prompts``): prompt sets kept as YAML data.
* :class:`EvalConfig` (``medvl.eval.config``): the ``eval`` config section.
"""

from __future__ import annotations

from medvl.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "medvl.eval.runner",
    "EvalConfig": "medvl.eval.config",
    "phrase_heatmap": "medvl.eval.grounding",
    "pointing_game": "medvl.eval.grounding",
    "mask_iou": "medvl.eval.grounding",
    "load_prompt_set": "medvl.inference.prompts",
    "zeroshot_scores": "medvl.inference.zeroshot",
    "evaluate_retrieval": "medvl.eval.retrieval",
    "linear_probe": "medvl.eval.probe",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)

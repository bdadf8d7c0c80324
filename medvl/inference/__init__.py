"""medvl.inference: one input -> a model answer, with the model directory's own preprocessing.

Public API (imported lazily so ``import medvl.inference`` stays cheap):

* :func:`load` / :class:`Pipeline` (``medvl.inference.pipeline``): ``medvl.load(dir)`` ->
  ``classify``, ``embed_images``, ``embed_texts``, ``heatmap``, ``prepare``,
  ``check_image``, ``check_text``.
* :class:`Preprocessing` (``medvl.inference.preprocessing``): ``preprocessing.json``.
* :class:`ClassifyResult`, :class:`Heatmap`, :class:`OODResult`: what the pipeline returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.lazy import lazy_exports

if TYPE_CHECKING:
    from medvl.inference.heatmap import Heatmap
    from medvl.inference.ood import OODResult
    from medvl.inference.pipeline import Pipeline, load
    from medvl.inference.preprocessing import Preprocessing
    from medvl.inference.result import ClassifyResult

_EXPORTS = {
    "load": "medvl.inference.pipeline",
    "Pipeline": "medvl.inference.pipeline",
    "ClassifyResult": "medvl.inference.result",
    "Preprocessing": "medvl.inference.preprocessing",
    "Heatmap": "medvl.inference.heatmap",
    "OODResult": "medvl.inference.ood",
}

__all__ = ["ClassifyResult", "Heatmap", "OODResult", "Pipeline", "Preprocessing", "load"]


__getattr__ = lazy_exports(__name__, _EXPORTS)

"""medvl: a medical vision-language platform.

Reads radiology images as a PACS does (DICOM, NIfTI), pairs them with their reports,
trains dual encoders aligned at several granularities, evaluates them the way papers in
the field do, and serves a case-retrieval viewer.

The public inference API is one call away (imported on first use, so ``import medvl``
stays cheap)::

    import medvl
    model = medvl.load("runs/demo/model")      # a medvl.inference.Pipeline
    result = model.classify("RG1_UNCR.dcm")    # scores, calibrated, ood, ood_reason
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from medvl.inference import ClassifyResult, Heatmap, OODResult, Pipeline, Preprocessing, load

_EXPORTS = dict.fromkeys(("load", "Pipeline", "ClassifyResult", "Heatmap", "OODResult", "Preprocessing"), "medvl.inference")

__all__ = ["ClassifyResult", "Heatmap", "OODResult", "Pipeline", "Preprocessing", "__version__", "load"]

__getattr__ = lazy_exports(__name__, _EXPORTS)

"""Recipes that turn public corpora, as their providers distribute them, into manifests.

``medvl prepare CORPUS --root PATH --out MANIFEST``; one module per corpus. See
``docs/datasets.md`` for where each corpus comes from, its licence and layout.
"""

from __future__ import annotations

from medvl.recipes import chexpert, ct_rate, folder, grounding, mimic_cxr, openi  # noqa: F401  (registration)
from medvl.recipes.base import RECIPES, PrepareOptions, Recipe

__all__ = ["RECIPES", "PrepareOptions", "Recipe", "prepare"]


def prepare(corpus: str, root, out, options: PrepareOptions | None = None) -> int:
    """Run recipe ``corpus`` on ``root`` and write the manifest ``out`` atomically; returns the row count."""
    from pathlib import Path

    from medvl.data.manifest import write_manifest

    out = Path(out)
    recipe = RECIPES.get(corpus, field="corpus")(Path(root), out.parent, options or PrepareOptions())
    return write_manifest(out, recipe.rows())

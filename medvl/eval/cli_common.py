"""Helper shared by the ``medvl eval``, ``medvl index`` and ``medvl embed`` commands: config lookup.

Models are loaded with :func:`medvl.load` (``medvl.inference``), which reads their own preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def find_experiment_config(model_dir: str | Path, config: str | None, overrides: list[str]) -> tuple[dict[str, Any], str]:
    """The experiment config to take the ``data`` / ``eval`` / ``index`` sections from.

    Order: ``--config`` when given; else ``config.yaml`` in the model folder or its parent
    (``medvl train`` writes it next to ``model/``); else an empty config (defaults).

    Returns:
        ``(config, where it came from)``.
    """
    from medvl.config import apply_overrides, load_config
    from medvl.experiment import check_overrides, check_top_level

    check_overrides(overrides)  # an override's own mistake is named as the override's, not the file's
    if config:
        cfg, source = load_config(config, overrides), config
    else:
        for cand in (Path(model_dir) / "config.yaml", Path(model_dir).parent / "config.yaml"):
            if cand.is_file():
                cfg, source = load_config(cand, overrides), str(cand)
                break
        else:
            cfg, source = apply_overrides({}, overrides), "defaults"
    check_top_level(cfg, source=source if source != "defaults" else None)  # before any work
    return cfg, source

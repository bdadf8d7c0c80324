"""The training engine: ``train(config, out_dir, resume=...)`` and its pieces.

See ``docs/training.md`` for the loop, checkpoints, resume and distributed runs.
Names are imported lazily so that ``medvl --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "medvl.train.config",
    "Components": "medvl.train.engine",
    "train": "medvl.train.engine",
    "TrainResult": "medvl.train.state",
    "TrainState": "medvl.train.state",
}

__all__ = ["Components", "TrainConfig", "TrainResult", "TrainState", "train"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medvl.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

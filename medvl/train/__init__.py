"""The training engine: ``train(config, out_dir, resume=...)`` and its pieces.

See ``docs/training.md`` for the loop, checkpoints, resume and distributed runs.
Names are imported lazily so that ``medvl --help`` does not pay for importing torch.
"""

from __future__ import annotations

from medvl.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "medvl.train.config",
    "Components": "medvl.train.engine",
    "train": "medvl.train.engine",
    "TrainResult": "medvl.train.state",
    "TrainState": "medvl.train.state",
}

__all__ = ["Components", "TrainConfig", "TrainResult", "TrainState", "train"]


__getattr__ = lazy_exports(__name__, _EXPORTS)

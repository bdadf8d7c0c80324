"""The training engine: ``train(config, out_dir, resume=...)`` and its pieces.

See ``docs/training.md`` for the loop, checkpoints, resume and distributed runs.
"""

from medvl.train.config import TrainConfig
from medvl.train.engine import Components, train
from medvl.train.state import TrainResult, TrainState

__all__ = ["Components", "TrainConfig", "TrainResult", "TrainState", "train"]

"""The counters a run carries between steps and across a resume, and the run's result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """Where training is. Saved in every checkpoint; restored by ``--resume``.

    Attributes:
        step: optimizer steps completed.
        epoch: current epoch (0-based).
        batch_in_epoch: micro-batches of the current epoch already consumed; with the
            epoch's seeded order this is the exact data position.
        global_batch_size: ``batch_size * world_size`` the position was counted in.
        samples: training samples seen (all ranks).
        skipped_steps: steps with no data on some rank (every study of the batch skipped).
        epoch_loss_sum: sum of the step losses of the current epoch (for its mean).
        epoch_steps: optimizer steps taken in the current epoch.
        best: best value of the monitored validation metric so far.
        best_step: step at which ``best`` was reached.
        history: one dict per validation (epoch, step, mean train loss, val metrics).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    global_batch_size: int = 0
    samples: int = 0
    skipped_steps: int = 0
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    best: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class TrainResult:
    """What :func:`medvl.train.train` returns.

    Attributes:
        model_dir: the saved model (best on validation, else the last), loadable with
            ``MedVLModel.from_pretrained``.
        history: one dict per validation: ``epoch``, ``step``, ``train_loss`` and the
            validation metrics (``i2t_R@1`` ...).
        seconds: wall time of the call.
        skipped: studies that could not be read (``study_id``, ``path``, ``error``).
        steps: optimizer steps completed in total (including before a resume).
        out_dir: the run directory.
    """

    model_dir: Path
    history: list[dict[str, Any]]
    seconds: float
    skipped: list[dict[str, Any]]
    steps: int = 0
    out_dir: Path | None = None

"""Metrics to ``metrics.csv`` and TensorBoard, on rank 0.

``metrics.csv`` has one row per logged train step (every loss term, learning rate,
gradient norm, throughput, data-wait fraction) and one row per validation, in one
wide table whose header grows when a new column first appears. On resume the rows
written after the checkpoint's step are dropped, so the file reads as one run.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from medvl.atomic import write_text_atomic

FIRST_COLUMNS = ("step", "epoch", "split")


class MetricsLogger:
    """Appends metric rows to CSV and TensorBoard.

    Args:
        out_dir: run directory; writes ``metrics.csv`` and ``tensorboard/``.
        enabled: False on ranks other than 0 (every call becomes a no-op).
        resume_step: when resuming, keep only existing rows with ``step <= resume_step``
            and tell TensorBoard to purge later events.
        tensorboard: also write TensorBoard events.
    """

    def __init__(
        self, out_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(FIRST_COLUMNS)
        self._writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                for row in reader:
                    if row.get("step") and int(row["step"]) <= resume_step:
                        self.rows.append({k: v for k, v in row.items() if v != ""})
                self.columns = list(reader.fieldnames or FIRST_COLUMNS)
        self._rewrite()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=purge)

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        """Record ``values`` (names without prefix) for ``split`` (``train`` or ``val``) at ``step``."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step, "epoch": epoch, "split": split}
        for k, v in values.items():
            row[k] = _fmt(v)
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self._writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._writer.add_scalar(f"{split}/{k}", v, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision so a resumed run can be compared exactly
    return v

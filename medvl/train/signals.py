"""Graceful stop on SIGTERM: finish the current step, save ``checkpoints/last``, stop.

Schedulers (Slurm, Kubernetes, spot instances) send SIGTERM some time before they kill
a job; ``torchrun`` forwards it to every worker. Instead of dying mid-step, the engine
notes the signal and checks the flag on every rank at the next step boundary, so all
ranks stop after the same step with a checkpoint that ``--resume`` continues exactly.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """Turns SIGTERM into a flag while installed (a no-op outside the main thread).

    Attributes:
        received: the name of the signal received, or None.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def install(self) -> None:
        """Catch the signals from now on."""
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

"""Shared helpers of the encoder benchmarks: machine record, timing, peak memory.

Each measurement runs in a fresh Python process (``python -m benchmarks.encoders.worker``)
so one encoder's allocations never inflate the next one's peak. Peak memory is the
highest resident set size a 5 ms sampler thread sees during the step, minus the
resident size just before it (model and input already built): the memory the step
itself needs. Workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed tensors go
back to the OS and the resident size follows the live tensors.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


class PeakRSS:
    """Context manager: peak resident memory (MiB) above the level at entry."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, float, float]:
    """Run ``fn`` once; return (wall seconds, CPU seconds, peak MiB above the starting level).

    CPU seconds (user + system time of this process, sampler thread included, which
    sleeps) are what the figures use: on a shared machine wall time mostly measures
    the other processes, while a one-thread run's CPU time measures the work.
    """
    import gc

    gc.collect()
    with PeakRSS() as mem:
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
    return seconds, cpu, mem.mib


def run_worker(task: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``worker.<task>(**kwargs)`` in a fresh process; return its JSON result."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # a fixed mmap threshold makes glibc return freed tensor memory to the OS, so the
    # resident size tracks live tensors and a warm run's peak is not hidden by memory
    # the allocator kept from the warm-up
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.encoders.worker", task, json.dumps(kwargs)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write ``<name>.json`` and ``<name>.md`` next to the scripts."""
    (HERE / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (HERE / f"{name}.md").write_text(markdown)
    print(markdown)

"""Suite-wide settings: offline, CPU, few threads, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest


@pytest.fixture(autouse=True)
def _seed() -> None:
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)


# CI (.ci/run) installs the tools the integration tests need and lists them in
# MEDVL_REQUIRE_TOOLS; a test skipped for want of one of them then fails instead, so
# the browser, dcm2niix and Orthanc tests cannot quietly stop running.
_REQUIRED = [t for t in os.environ.get("MEDVL_REQUIRE_TOOLS", "").lower().split() if t]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not (_REQUIRED and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    hit = [t for t in _REQUIRED if t in reason.lower()]
    if hit:
        report.outcome = "failed"
        report.longrepr = f"skipped, but MEDVL_REQUIRE_TOOLS requires {', '.join(hit)}: {reason}"

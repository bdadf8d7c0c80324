"""Fixtures of the PACS tests: real Orthanc servers on 127.0.0.1 with identifiable test data.

The tests run against Debian's ``orthanc`` + ``orthanc-dicomweb`` (``.ci/run`` installs
them). Only when they are truly absent are the server tests skipped, with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pacs_helpers (tests import it)

from pacs_helpers import MISSING

from medvl.pacs.testing import OrthancServer, load_synthetic


@pytest.fixture(autouse=True)
def _no_pacs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the MEDVL_PACS_* variables they need; none leak in from the shell."""
    import os

    for key in list(os.environ):
        if key.startswith("MEDVL_PACS_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc holding 6 synthetic radiographs and 1 CT series, each with a text SR."""
    if MISSING:
        pytest.skip(MISSING)
    work = tmp_path_factory.mktemp("orthanc-corpus")
    with OrthancServer() as server:
        studies = load_synthetic(server, work, n_cxr=6, n_ct=1)
        yield server, studies

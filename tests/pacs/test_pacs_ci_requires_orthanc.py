"""CI (``.ci/run``) installs orthanc + orthanc-dicomweb and lists ``orthanc`` in
MEDVL_REQUIRE_TOOLS; the suite's conftest then turns a PACS test skipped for want of the
server into a failure. Checked here on a copy of the real conftest with Orthanc made to
look absent (``medvl.pacs.testing.ORTHANC`` pointed at a missing file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = '''
import pytest

import medvl.pacs.testing as testing

testing.ORTHANC = "/nonexistent/Orthanc"
MISSING = testing.orthanc_missing()


@pytest.fixture
def server():
    if MISSING:
        pytest.skip(MISSING)  # as the PACS fixtures do
    yield


@pytest.mark.skipif(bool(MISSING), reason=MISSING or "")
def test_marked():
    pass


def test_fixture(server):
    pass
'''


def _run(tmp_path: Path, required: str | None) -> str:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "MEDVL_REQUIRE_TOOLS"}
    if required is not None:
        env["MEDVL_REQUIRE_TOOLS"] = required
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout + done.stderr


def test_a_missing_orthanc_fails_when_ci_requires_it(tmp_path) -> None:
    out = _run(tmp_path, "chromium playwright dcm2niix orthanc")
    # a skip at setup (a marker or a fixture) is reported as an error of the test: the run fails
    assert "2 errors" in out and "skipped" not in out.splitlines()[-1], out
    assert "MEDVL_REQUIRE_TOOLS requires orthanc" in out and "Orthanc is not installed" in out


def test_a_missing_orthanc_skips_outside_ci(tmp_path) -> None:
    assert "2 skipped" in _run(tmp_path, None)
    assert "2 skipped" in _run(tmp_path, "chromium playwright")  # a CI run without orthanc


def test_ci_installs_orthanc_and_its_dicomweb_plugin() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "missing+=(orthanc)" in script and "missing+=(orthanc-dicomweb)" in script
    assert "required+=(orthanc)" in script and "libOrthancDicomWeb.so" in script

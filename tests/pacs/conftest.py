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


#: real files shipped with pydicom / pydicom-data put on the walk's server
REAL_FILES = ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm"]


@pytest.fixture(scope="session")
def walk(tmp_path_factory: pytest.TempPathFactory):
    """The end-to-end setup, built only through the public commands, against a real Orthanc:

    the server holds 48 synthetic radiographs and a synthetic CT series (each with a text
    SR quoting the patient's name and id) and three real files (pydicom's CT and MR slices,
    pydicom-data's 1955x1841 chest CR), all carrying a patient name, id, other ids,
    accession number, birth date, institution and referring physician;
    ``medvl prepare dicomweb`` ingests them; ``medvl train`` trains the tiny model on the
    ingested synthetic radiographs (those with reports) (so its directory holds the training profile
    the out-of-distribution guard reads: an MR slice is outside it); ``medvl index build``
    indexes every ingested study.
    """
    import json
    from types import SimpleNamespace

    from medvl.cli import main
    from medvl.data.manifest import read_manifest
    from medvl.pacs.testing import load_real_files

    if MISSING:
        pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("pacs-walk")
    repo = Path(__file__).resolve().parents[2]
    with OrthancServer() as server:
        studies = load_synthetic(server, root / "data", n_cxr=48, n_ct=1, seed=11, other_ids=True)
        studies += load_real_files(server, root / "data", REAL_FILES)  # no report: not trained on
        out = root / "pacs"
        assert main(["prepare", "dicomweb", "--url", server.url, "--out", str(out), "--allow-missing-reports"]) == 0
        rows = read_manifest(out / "manifest.jsonl")
        train_rows = [r for r in rows if r.modality in ("CR", "DX") and r.report and r.meta.get("instances") == 1]
        with (out / "manifest.jsonl").open() as f:
            lines = {json.loads(line)["study_id"]: line for line in f if line.strip()}
        train = out / "train.jsonl"  # next to the manifest: image paths resolve alike
        train.write_text("".join(lines[r.study_id] for r in train_rows))
        run = root / "run"
        assert main(["train", "--config", str(repo / "configs" / "tiny.yaml"), "--out", str(run),
                     f"data.manifest={train}", "data.batch_size=4", "train.epochs=1"]) == 0
        model = run / "model"
        index = root / "index"
        assert main(["index", "build", "--model", str(model), "--manifest", str(out / "manifest.jsonl"),
                     "--out", str(index), "index.progress=false"]) == 0
        yield SimpleNamespace(server=server, studies=studies, out=out, model=model, index=index, root=root,
                              rows=rows, train=[r.study_id for r in train_rows])

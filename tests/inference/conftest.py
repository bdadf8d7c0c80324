"""A tiny model trained once for the inference tests: synth -> train (CLI), with its model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """``run/`` with ``model/`` (preprocessing, calibration, profile) and ``corpus/manifest.jsonl``.

    120 synthetic chest radiographs, the tiny config, 2 epochs: about a minute on 2 cores.
    """
    from medvl.cli import main

    out = tmp_path_factory.mktemp("inference_run")
    assert main(["synth", "--out", str(out / "corpus"), "--n-cxr", "120", "--n-ct", "0", "--seed", "5",
                 "--image-size", "128"]) == 0
    assert main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out / "run"),
                 f"data.manifest={out / 'corpus' / 'manifest.jsonl'}", "train.epochs=2"]) == 0
    return out

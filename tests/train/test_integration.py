"""The engine with the real rooms: synthetic corpus -> medvl.data -> MedVLModel -> AlignmentLoss."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvl.train import train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    synth = pytest.importorskip("medvl.data.synth")
    return Path(synth.generate_corpus(tmp_path_factory.mktemp("corpus"), n_cxr=20, n_ct=0, seed=0))


def _config(manifest: Path) -> dict:
    return {
        "seed": 0,
        "data": {"manifest": str(manifest), "dims": 2, "image_size": 32, "batch_size": 4},
        "model": {"embed_dim": 16,
                  "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 32},
                  "text": {"name": "bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                           "intermediate_size": 64, "max_length": 32}},
        "loss": {"terms": {"instance": {"weight": 1.0}, "token": {"weight": 0.5}, "prototype": {"weight": 0.2}}},
        "train": {"epochs": 1, "lr": 1e-3, "accum_steps": 2, "log_every": 1, "progress": False},
    }


def test_real_pieces_train_and_the_saved_model_loads(manifest: Path, tmp_path: Path) -> None:
    pytest.importorskip("medvl.models.model")
    pytest.importorskip("medvl.losses.combine")
    from medvl.models import MedVLModel

    result = train(_config(manifest), tmp_path / "run")
    assert result.steps >= 1
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    # every term the real loss reports is logged (unweighted, docs/losses.md), and the
    # weighted total adds up with the config's weights
    weights = {"instance_loss": 1.0, "token_loss": 0.5, "prototype_loss": 0.2}
    for term in [*weights, "loss"]:
        assert rows[0][term] != "", term
    total = sum(w * float(rows[0][t]) for t, w in weights.items())
    assert float(rows[0]["loss"]) == pytest.approx(total, rel=1e-5)
    assert result.history and "i2t_R@1" in result.history[-1]

    card = (result.model_dir / "README.md").read_text()
    assert "i2t_R@1" in card and str(manifest) in card  # the card says what it was trained and selected on

    model = MedVLModel.from_pretrained(result.model_dir)
    saved = load_file(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors")
    state = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k

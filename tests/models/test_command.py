"""The ``medvl model`` subcommand module (wired into medvl.cli by the integrator)."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from medvl.errors import CheckpointError
from medvl.models import command


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_encoders_lists_both_registries(capsys):
    assert _run(["encoders"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "resnet18-3d" in out and "minilm" in out and "llm" in out


def test_init_then_info(tmp_path, capsys, tiny_cfg):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_cfg}))
    assert _run(["init", str(cfg), "--out", str(tmp_path / "m"), "-o", "model.embed_dim=8"]) == 0
    capsys.readouterr()
    assert _run(["info", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["embed_dim"] == 8 and info["image"]["name"] == "resnet10"
    with pytest.raises(CheckpointError):
        _run(["info", str(tmp_path)])

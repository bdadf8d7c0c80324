"""``medvl train`` on the command line (fakes stand in for the other rooms)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from train_fakes import components, tiny_config

from medvl.cli import main
from medvl.train import engine


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(engine, "default_components", components)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    return path


def test_train_then_resume_with_an_override(config_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(out)]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    # extend the finished run by one epoch
    assert main(["train", "--config", str(config_file), "--out", str(out), "--resume", "train.epochs=2"]) == 0
    captured = capsys.readouterr()
    assert "trained 12 steps" in captured.out and "resumed" in captured.err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2


def test_bad_override_is_one_line_and_exit_2(config_file: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--config", str(config_file), "--out", str(tmp_path / "r"), "train.precision=fp8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.precision" in err[0] and "fp8" in err[0]


def test_resume_with_another_model_is_one_line_and_exit_2(config_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(["train", "--config", str(config_file), "--out", str(out), "--resume", "model.dim=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "model.dim" in err[-1] and "--resume" in err[-1]

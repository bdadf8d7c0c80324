"""The top-level experiment schema: misspelled sections stop a command before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvl.cli import main
from medvl.errors import ConfigError
from medvl.experiment import parse_experiment

REPO = Path(__file__).resolve().parents[1]


def test_a_misspelled_section_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        parse_experiment({"seed": 1, "trian": {"epochs": 50}})
    assert err.value.field == "trian" and "did you mean 'train'" in str(err.value)
    with pytest.raises(ConfigError, match="unknown top-level section 'banana'"):
        parse_experiment({"banana": 1})


def test_one_seed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_experiment({"seed": 1, "train": {"seed": 2}})
    assert err.value.field == "train.seed" and "top-level" in str(err.value)
    with pytest.raises(ConfigError, match="seed"):
        parse_experiment({"seed": "zero"})


def test_every_section_is_typed_and_resolved_with_defaults() -> None:
    from medvl.data.config import DataConfig
    from medvl.eval.config import EvalConfig
    from medvl.losses.combine import LossConfig
    from medvl.models.config import ModelConfig
    from medvl.train.config import TrainConfig

    exp = parse_experiment(yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text()))
    assert isinstance(exp.data, DataConfig) and exp.data.image_size == 64
    assert isinstance(exp.model, ModelConfig) and isinstance(exp.loss, LossConfig)
    assert isinstance(exp.train, TrainConfig) and isinstance(exp.eval, EvalConfig)
    resolved = exp.resolved()
    assert resolved["seed"] == 0 and resolved["data"]["fit"] == "pad" and resolved["train"]["fit_inference"] is True
    assert parse_experiment(resolved).resolved() == resolved  # the run record parses back to itself
    with pytest.raises(ConfigError) as err:
        parse_experiment({"data": {"image_sise": 3}})
    assert err.value.field == "data.image_sise"


def test_the_engine_hands_typed_sections_to_the_builders(tmp_path) -> None:
    from medvl.models.config import ModelConfig
    from medvl.train import engine

    seen = {}

    def build_model(section):
        seen["model"] = section
        raise RuntimeError("stop here")

    parts = engine.default_components()
    parts = engine.Components(build_model, parts.build_loss, parts.build_dataloader)
    with pytest.raises(RuntimeError, match="stop here"):
        engine.train({"data": {"manifest": "m.jsonl"}, "model": {"embed_dim": 16}}, tmp_path / "r", components=parts)
    assert isinstance(seen["model"], ModelConfig) and seen["model"].embed_dim == 16


@pytest.mark.parametrize("command", [
    ["train", "--config", "{cfg}", "--out", "{out}"],
    ["demo", "--config", "{cfg}", "--out", "{out}"],
    ["eval", "--model", "{out}", "--manifest", "m.jsonl", "--config", "{cfg}", "--out", "{out}"],
    ["index", "build", "--model", "{out}", "--manifest", "m.jsonl", "--config", "{cfg}", "--out", "{out}"],
])
def test_commands_exit_2_before_any_work(tmp_path, capsys, command) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 0\ntrian: {epochs: 50}\n")
    out = tmp_path / "out"
    assert main([a.format(cfg=cfg, out=out) for a in command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'train'" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["train", "--config", "{cfg}", "--out", "{out}"],
    ["demo", "--config", "{cfg}", "--out", "{out}"],
    ["eval", "--model", "{out}", "--manifest", "m.jsonl", "--config", "{cfg}", "--out", "{out}"],
    ["index", "build", "--model", "{out}", "--manifest", "m.jsonl", "--config", "{cfg}", "--out", "{out}"],
])
@pytest.mark.parametrize("override, said", [
    ("trian.epochs=3", "[trian]: in the command-line override 'trian.epochs=3': unknown top-level section "
                       "'trian'; did you mean 'train'?"),
    ("train.epocs=3", "[train.epocs]: in the command-line override 'train.epocs=3': unknown key train.epocs; "
                      "did you mean 'train.epochs'?"),
    ("train.seed=3", "in the command-line override 'train.seed=3': train.seed is gone"),
])
def test_a_misspelt_override_is_named_as_the_override_not_the_config_file(tmp_path, capsys, command, override,
                                                                         said) -> None:
    cfg = tmp_path / "good.yaml"
    cfg.write_text("seed: 0\ntrain: {epochs: 1}\n")
    out = tmp_path / "out"
    assert main([a.format(cfg=cfg, out=out) for a in command] + [override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "good.yaml" not in err[0]
    assert not out.exists()


def test_each_override_is_judged_on_its_own() -> None:
    from medvl.experiment import check_overrides

    check_overrides(["train.epochs=3", "seed=1", "output_dir=runs/x"])
    with pytest.raises(ConfigError) as err:
        check_overrides(["train.epochs=3", "train.seed=1"])
    assert "override 'train.seed=1'" in str(err.value) and "'train.epochs=3'" not in str(err.value)

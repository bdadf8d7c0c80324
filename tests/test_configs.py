"""Every config shipped in configs/ parses, validates and builds its components."""

from pathlib import Path

import pytest

from medvl.config import from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds(path) -> None:
    from medvl.data.config import DataConfig
    from medvl.eval.config import EvalConfig
    from medvl.index.config import IndexConfig
    from medvl.losses import build_loss
    from medvl.models import build_model
    from medvl.train.config import TrainConfig

    cfg = load_config(path)
    assert set(cfg) <= {"seed", "demo", "data", "model", "loss", "train", "eval", "index", "output_dir"}
    data = from_dict(DataConfig, cfg.get("data"), where="data")
    from_dict(TrainConfig, cfg.get("train"), where="train")
    from_dict(EvalConfig, cfg.get("eval"), where="eval")
    from_dict(IndexConfig, cfg.get("index"), where="index")
    model = build_model(cfg["model"])
    build_loss(cfg.get("loss", {}), embed_dim=cfg["model"]["embed_dim"])
    assert model.config["image"]["in_channels"] == data.in_channels

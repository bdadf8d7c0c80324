"""Checkpoints round-trip every piece of state and refuse what does not fit."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fakes import FakeLoss, FakeModel

from medvl.errors import CheckpointError
from medvl.train.checkpoint import (
    capture_rng,
    fingerprint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from medvl.train.config import TrainConfig
from medvl.train.optim import build_optimizer, build_scheduler

CFG = {"model": {"hidden": 16, "dim": 8}, "loss": {"token_weight": 0.1}}


def _setup(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    model, loss_fn = FakeModel(cfg["model"]), FakeLoss(cfg["loss"])
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    opt = build_optimizer(named, TrainConfig(lr=0.01))
    sched = build_scheduler(opt, TrainConfig(lr=0.01, warmup_steps=2), 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, loss_fn, opt, sched, scaler


def _step(model, loss_fn, opt, sched, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=g)
    tok = model.tokenize(["a b", "c", "d e f", "g"])
    loss = loss_fn(model.encode_image(x), model.encode_text(**tok), logit_scale=model.logit_scale)["loss"]
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _save(path: Path, objs, cfg=CFG) -> None:
    model, loss_fn, opt, sched, scaler = objs
    save_checkpoint(path, model=model, loss_fn=loss_fn, optimizer=opt, scheduler=sched, scaler=scaler,
                    trainer_state={"step": 3}, rng=[capture_rng(torch.device("cpu"))],
                    fingerprint=fingerprint(cfg, model, loss_fn))


def _load(path: Path, objs, cfg=CFG) -> dict:
    model, loss_fn, opt, sched, scaler = objs
    return load_checkpoint(path, model=model, loss_fn=loss_fn, optimizer=opt, scheduler=sched, scaler=scaler,
                           fingerprint=fingerprint(cfg, model, loss_fn))


def test_round_trip_restores_weights_optimizer_and_schedule(tmp_path: Path) -> None:
    a = _setup(CFG)
    for s in range(3):
        _step(*a[:4], seed=s)
    opt_state = copy.deepcopy(a[2].state_dict())
    _save(tmp_path / "ck", a)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "loss.safetensors", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]  # no pickle

    b = _setup(CFG, seed=99)  # different initial weights
    doc = _load(tmp_path / "ck", b)
    assert doc["trainer"] == {"step": 3}
    for k, v in a[0].state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k]), k
    assert torch.equal(a[1].token_temperature, b[1].token_temperature)
    got = b[2].state_dict()
    for idx, per_param in opt_state["state"].items():
        for name, t in per_param.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(got["state"][idx][name])), (idx, name)
    assert got["param_groups"] == opt_state["param_groups"]
    assert b[3].last_epoch == a[3].last_epoch == 3
    # the next step is identical from either
    _step(*a[:4], seed=3)
    _step(*b[:4], seed=3)
    for k, v in a[0].state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k]), k


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng(torch.device("cpu"))
    first = (random.random(), float(np.random.rand()), torch.rand(4))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(state, torch.device("cpu"))
    again = (random.random(), float(np.random.rand()), torch.rand(4))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_config_mismatch_names_the_key(tmp_path: Path) -> None:
    _save(tmp_path / "ck", _setup(CFG))
    other = {"model": {"hidden": 16, "dim": 8}, "loss": {"token_weight": 0.5}}
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path / "ck", _setup(other), cfg=other)
    assert info.value.field == "loss.token_weight" and "0.1" in str(info.value) and "0.5" in str(info.value)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    _save(tmp_path / "ck", _setup(CFG))
    bigger = {"model": {"hidden": 32, "dim": 8}, "loss": CFG["loss"]}
    objs = _setup(bigger)
    with pytest.raises(CheckpointError, match=r"image_body\.0\.bias has shape \[16\] in the checkpoint and \[32\]"):
        _load(tmp_path / "ck", objs, cfg=CFG)  # same config text, different architecture


def test_missing_or_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        _load(tmp_path, _setup(CFG))
    _save(tmp_path / "ck", _setup(CFG))
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path / "ck", _setup(CFG))
    assert "model.safetensors" in str(info.value)

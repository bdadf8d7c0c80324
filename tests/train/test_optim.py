"""Optimizer groups and the warmup/cosine schedule against transformers' implementation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from medvl.config import from_dict
from medvl.errors import ConfigError
from medvl.train.config import TrainConfig
from medvl.train.optim import build_optimizer, build_scheduler


def _lrs(make, steps: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=0.3)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("warmup", "total", "min_ratio"), [(0, 10, 0.0), (3, 20, 0.0), (5, 12, 0.1)])
def test_schedule_matches_transformers(warmup: int, total: int, min_ratio: float) -> None:
    cfg = TrainConfig(lr=0.3, warmup_steps=warmup, min_lr_ratio=min_ratio)
    ours = _lrs(lambda o: build_scheduler(o, cfg, total), total)
    ref = _lrs(lambda o: get_cosine_with_min_lr_schedule_with_warmup(
        o, num_warmup_steps=warmup, num_training_steps=total, min_lr_rate=min_ratio), total)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_warmup_ratio_is_a_fraction_of_all_steps() -> None:
    assert TrainConfig(warmup_ratio=0.1).warmup_for(200) == 20
    assert TrainConfig(warmup_steps=50).warmup_for(20) == 20


def test_no_weight_decay_on_biases_norms_and_logit_scale() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.ones([]))
    opt = build_optimizer(model.named_parameters(), TrainConfig(weight_decay=0.2))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


@pytest.mark.parametrize(("section", "key"), [
    ({"lr": 0}, "train.lr"),
    ({"warmup_steps": 5, "warmup_ratio": 0.1}, "train.warmup_ratio"),
    ({"precision": "fp8"}, "train.precision"),
    ({"device": "gpu"}, "train.device"),
    ({"betas": [0.9]}, "train.betas"),
    ({"epochs": "3"}, "train.epochs"),
])
def test_bad_values_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, section, where="train")
    assert info.value.field == key


def test_schedule_rebuilt_at_a_step_continues_exactly() -> None:
    cfg = TrainConfig(lr=0.3, warmup_steps=3)
    full = _lrs(lambda o: build_scheduler(o, cfg, 12), 12)
    tail = _lrs(lambda o: build_scheduler(o, cfg, 12, start_step=5), 7)
    assert tail == pytest.approx(full[5:], abs=1e-15)


def _scaled_setup():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.0)
    sched = build_scheduler(opt, TrainConfig(lr=0.1), 10)
    # the fp16 path of a GPU run, exercised with torch's CPU loss scaler
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    return p, opt, sched, scaler


def test_loss_scaler_path_unscales_before_clipping_and_matches_an_unscaled_step() -> None:
    from medvl.train.optim import step_optimizer, unscale_and_clip

    p, opt, sched, scaler = _scaled_setup()
    start = p.detach().clone()
    scaler.scale((p ** 2).sum()).backward()
    norm = unscale_and_clip([p], opt, scaler, grad_clip=None)
    assert norm == pytest.approx(float((2 * start).norm()), rel=1e-5)  # the true, unscaled norm
    step_optimizer(opt, scaler, sched)

    ref = torch.nn.Parameter(start.clone())
    ref_opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.0)
    (ref ** 2).sum().backward()
    ref_opt.step()
    torch.testing.assert_close(p.detach(), ref.detach())


def test_loss_scaler_skips_an_overflowing_step_and_lowers_the_scale() -> None:
    from medvl.train.optim import step_optimizer, unscale_and_clip

    p, opt, sched, scaler = _scaled_setup()
    start = p.detach().clone()
    scaler.scale((p * float("inf")).sum()).backward()
    assert not math.isfinite(unscale_and_clip([p], opt, scaler, grad_clip=1.0))
    step_optimizer(opt, scaler, sched)
    assert torch.equal(p.detach(), start)
    assert scaler.get_scale() == 512.0

"""AdamW with CLIP's weight-decay split, and a linear-warmup cosine schedule."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from medvl.train.config import TrainConfig


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norm weights, embeddings of 1-D shape and temperatures are not decayed."""
    return param.ndim < 2 or "logit_scale" in name or name.endswith(".bias")


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: TrainConfig
) -> torch.optim.AdamW:
    """AdamW over trainable parameters, two groups: decayed matrices and the rest.

    Args:
        named_params: ``(name, parameter)`` pairs of everything trained (model and loss).
        cfg: the train section.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel is the fast path on GPU; on CPU torch's default loop is used.
    fused = bool(decay or no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
        fused=True if fused else None,
    )


class WarmupCosine:
    """LR multiplier: linear warmup from 0 to 1, then cosine down to ``min_ratio``.

    A callable object rather than a closure so ``LambdaLR.state_dict`` records its
    settings (and a checkpoint can be checked against them).

    Args:
        warmup_steps: steps of linear warmup; step ``s < warmup`` gets ``s / warmup``.
        total_steps: length of the whole schedule in optimizer steps.
        min_ratio: the multiplier reached at ``total_steps``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, 1))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, *, start_step: int = 0
) -> LambdaLR:
    """Per-step schedule over ``total_steps`` optimizer steps (call ``.step()`` after each).

    Args:
        optimizer: the optimizer whose groups get ``lr * multiplier(step)``.
        cfg: the train section (peak ``lr``, warmup, ``min_lr_ratio``).
        total_steps: length of the schedule.
        start_step: steps already taken (resume). The rate is a closed-form function of
            the step, so a schedule rebuilt at step ``s`` continues exactly; rebuilding
            from the config also lets a resumed run be extended (more epochs) or get a
            new peak rate.
    """
    fn = WarmupCosine(cfg.warmup_for(total_steps), total_steps, cfg.min_lr_ratio)
    if start_step <= 0:
        return LambdaLR(optimizer, fn)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
    return LambdaLR(optimizer, fn, last_epoch=start_step - 1)


def unscale_and_clip(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, scaler: Any,
                     grad_clip: float | None) -> float:
    """Undo the fp16 loss scale (no-op otherwise) and clip; return the global gradient norm.

    The norm is of the unscaled gradients, before clipping; ``inf``/``nan`` when a
    gradient overflowed (the scaler then skips the step in :func:`step_optimizer`).
    """
    scaler.unscale_(optimizer)
    return float(torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf))


def step_optimizer(optimizer: torch.optim.Optimizer, scaler: Any, scheduler: LambdaLR) -> float:
    """One AdamW update through the scaler, then the schedule; return the rate the update used."""
    lr = scheduler.get_last_lr()[0]
    scaler.step(optimizer)  # skips the update when fp16 gradients overflowed
    scaler.update()
    with warnings.catch_warnings():
        # After a skipped fp16 step torch warns that the schedule stepped before the
        # optimizer; advancing it anyway keeps the schedule tied to the step count.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(lr)

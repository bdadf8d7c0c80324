"""``TrainConfig``: the ``train`` section of an experiment config.

Built with :func:`medvl.config.from_dict` (``from_dict(TrainConfig, cfg["train"], where="train")``),
which rejects unknown keys and wrong types; :meth:`TrainConfig.validate` checks the
relations between fields and raises :class:`~medvl.errors.ConfigError` naming the key.

The batch size is not here: it belongs to the ``data`` section (``data.batch_size``)
because the data loader owns batching. The effective batch of one optimizer step is
``data.batch_size * train.accum_steps * world_size``, and every sample of it is a
negative for every other (see :mod:`medvl.train.gradcache`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from medvl.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class TrainConfig:
    """How the engine trains.

    Attributes:
        epochs: passes over the train split (ignored when ``max_steps`` is set).
        max_steps: optimizer steps to run; when set it replaces ``epochs`` and the
            schedule is laid out over exactly this many steps.
        lr: peak learning rate of AdamW (reached at the end of warmup).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not to
            biases, norms, ``logit_scale`` or other 1-D parameters, as CLIP does).
        betas: AdamW betas; 0.98 for the second moment is CLIP's choice for
            contrastive training with large batches.
        eps: AdamW epsilon.
        warmup_steps: linear warmup length in optimizer steps.
        warmup_ratio: warmup as a fraction of all steps; use one of the two.
        grad_clip: max global L2 norm of the gradients; ``null`` disables clipping
            (the norm is still logged).
        accum_steps: micro-batches per optimizer step. Embeddings of all micro-batches
            are cached so the loss sees the whole effective batch as negatives.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast. Only used on a GPU; on CPU
            training runs in fp32 (a warning says so).
        log_every: write train metrics (CSV, TensorBoard) every this many steps.
        val_every_epoch: run validation retrieval every this many epochs (0 = never;
            the model saved is then the last one).
        checkpoint_every_steps: also write the ``last`` checkpoint every this many
            steps (it is always written at the end of each epoch); ``null`` = epochs only.
        monitor: validation metric that picks the best model (higher is better).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show a tqdm progress bar on rank 0.
        clamp_logit_scale: clamp the learnable ``logit_scale`` to ``ln(100)`` after
            each step (CLIP's guard against a collapsing temperature).
        fit_inference: at the end, write the model directory's calibration (fitted on
            the val split) and training profile with its out-of-distribution reference
            (``medvl.inference.fit``); costs one pass over the val split and up to 2,048
            train studies.
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    grad_clip: float | None = 1.0
    accum_steps: int = 1
    precision: Precision = "fp32"
    log_every: int = 10
    val_every_epoch: int = 1
    checkpoint_every_steps: int | None = None
    monitor: str = "mean_recall"
    device: str = "auto"
    progress: bool = True
    clamp_logit_scale: bool = True
    fit_inference: bool = True

    def validate(self) -> None:
        """Check value ranges and cross-field constraints."""
        def need(ok: bool, key: str, got: object, expected: str) -> None:
            if not ok:
                raise ConfigError(f"{key} is {got!r}", field=f"train.{key}", expected=expected)

        need(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "null or >= 1")
        need(self.lr > 0, "lr", self.lr, "> 0")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas,
             "two values in [0, 1)")
        need(self.eps > 0, "eps", self.eps, "> 0")
        need(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        need(self.warmup_ratio is None or 0.0 <= self.warmup_ratio < 1.0, "warmup_ratio",
             self.warmup_ratio, "null or in [0, 1)")
        if self.warmup_ratio is not None and self.warmup_steps > 0:
            raise ConfigError("both warmup_steps and warmup_ratio are set", field="train.warmup_ratio",
                              expected="only one of them")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or > 0")
        need(self.accum_steps >= 1, "accum_steps", self.accum_steps, ">= 1")
        need(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        need(self.val_every_epoch >= 0, "val_every_epoch", self.val_every_epoch, ">= 0")
        need(self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
             "checkpoint_every_steps", self.checkpoint_every_steps, "null or >= 1")
        need(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device)), "device", self.device,
             "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")

    def warmup_for(self, total_steps: int) -> int:
        """Warmup length in steps for a run of ``total_steps`` optimizer steps."""
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * total_steps)
        return min(self.warmup_steps, total_steps)

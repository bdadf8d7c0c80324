"""The training loop: ``train(config, out_dir)`` reads top to bottom, under python or torchrun.

Outline of one run:

1. read the ``train`` section, join the process group if torchrun started us;
2. build model, loss and data (seeded, rank 0's weights broadcast to every rank);
3. AdamW + warmup/cosine schedule (+ loss scaler for fp16 on GPU);
4. optionally resume every piece of state from ``checkpoints/last``;
5. loop: gather ``accum_steps`` micro-batches -> loss over the whole effective batch
   -> non-finite check on every rank -> backward -> average gradients over ranks ->
   clip -> step; log every ``log_every`` steps; checkpoint when asked;
6. at each epoch end: validation retrieval, best model, ``last`` checkpoint.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medvl.atomic import atomic_path, recover_dir
from medvl.data.config import DataConfig
from medvl.errors import ConfigError, TrainingError
from medvl.experiment import Experiment, parse_experiment
from medvl.losses.distributed import average_gradients
from medvl.runinfo import write_run_info
from medvl.train import distributed as D
from medvl.train.checkpoint import (
    capture_rng,
    fingerprint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from medvl.train.config import TrainConfig
from medvl.train.data import (
    MicroBatchMaker,
    SkipTracker,
    build_train_loader,
    build_val_loader,
)
from medvl.train.gradcache import contrastive_step
from medvl.train.logger import MetricsLogger
from medvl.train.optim import (
    build_optimizer,
    build_scheduler,
    step_optimizer,
    unscale_and_clip,
)
from medvl.train.record import (
    LocalHeadMonitor,
    fit_inference,
    model_card,
    model_preprocessing,
    say,
    stop_nonfinite,
)
from medvl.train.signals import StopRequest
from medvl.train.state import TrainResult, TrainState
from medvl.train.validation import metric_names, validate

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class Components:
    """The builders the engine calls; tests pass small fakes, the CLI the real rooms.

    Attributes:
        build_model: ``model`` section (a ``ModelConfig``) -> dual encoder.
        build_loss: (``loss`` section (a ``LossConfig``), the built model) -> alignment
            loss; the model is passed so terms with parameters can size them to its embedding.
        build_dataloader: ``medvl.data.build_dataloader``'s signature (``data`` is a ``DataConfig``).
        raw_sections: sections handed to these builders as plain mappings instead of
            typed configs (builders that are not medvl's rooms, such as test fakes).
    """

    build_model: Callable[[Any], torch.nn.Module]
    build_loss: Callable[[Any, torch.nn.Module], torch.nn.Module]
    build_dataloader: Callable[..., DataLoader]
    raw_sections: tuple[str, ...] = ()


def default_components() -> Components:
    """``medvl.models.build_model``, ``medvl.losses.build_loss``, ``medvl.data.build_dataloader``."""
    from medvl.data import build_dataloader
    from medvl.losses import build_loss
    from medvl.models import build_model

    def loss_for(loss_cfg: Any, model: torch.nn.Module) -> torch.nn.Module:
        from medvl.config import to_dict

        model_cfg = getattr(model, "config", None)
        embed_dim = model_cfg.get("embed_dim") if isinstance(model_cfg, dict) else None
        return build_loss(to_dict(loss_cfg), embed_dim=embed_dim)

    return Components(build_model, loss_for, build_dataloader)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)


def train(
    config: Experiment | Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    components: Components | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train a dual encoder from an experiment config.

    Args:
        config: the experiment, an :class:`~medvl.experiment.Experiment` or the mapping
            :func:`~medvl.experiment.parse_experiment` validates (unknown top-level keys
            are refused before any work); the engine uses its typed ``data``, ``model``,
            ``loss`` and ``train`` sections and the one ``seed``.
        out_dir: run directory; receives ``model/`` (best), ``checkpoints/{last,best}``,
            ``metrics.csv``, ``tensorboard/``, ``skipped.jsonl``, ``config.yaml``, ``run.json``.
        resume: continue from ``out_dir/checkpoints/last`` (model, optimizer, scheduler,
            loss scaler, RNG of every rank and data position). Without a checkpoint the
            run starts fresh.
        components: builders of model, loss and data loader (default: the medvl rooms).
        on_step: called on every rank after each optimizer step (after any checkpoint
            of that step); an exception raised there ends the run like a crash would.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: an unknown top-level key, an invalid section or a missing ``data.manifest``.
        CheckpointError: ``resume`` with a checkpoint of a different model or loss config.
        TrainingError: a non-finite loss or gradient (the last good state is saved first).
    """
    t_start = time.perf_counter()
    parts = components or default_components()
    exp = parse_experiment(config, raw_sections=parts.raw_sections)
    cfg = exp.train
    if cfg.monitor not in metric_names():
        raise ConfigError(f"unknown validation metric {cfg.monitor!r}", field="train.monitor",
                          expected="one of " + ", ".join(metric_names()))
    exp = _with_start_preprocessing(exp)
    out = Path(out_dir)
    env = D.init_distributed(cfg.device)
    try:
        result = _train(exp, cfg, exp.seed, out, parts, env, resume, on_step, t_start)
        # Every rank is done before any tears the group down: a rank that destroys it
        # (rank 0 also hosts torchrun's store) while another is still leaving was seen,
        # once under a loaded 2-core CI, to abort that rank after a finished run.
        D.barrier()
        return result
    finally:
        D.cleanup(env)


def _train(exp: Experiment, cfg: TrainConfig, seed: int, out: Path, parts: Components, env: D.DistEnv,
           resume: bool, on_step, t_start: float) -> TrainResult:
    device = env.device
    if cfg.precision != "fp32" and device.type != "cuda":
        say(env, f"precision {cfg.precision} needs a GPU; training in fp32 on {device.type}")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_info(out, exp.resolved(), seed, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))

    # -- model, loss, data ---------------------------------------------------------------
    seed_everything(seed)  # identical initial weights on every rank (then broadcast anyway)
    # a dual encoder module (encode_image, encode_text, tokenize, save_pretrained); tests pass fakes
    model: Any = parts.build_model(exp.model).to(device)
    # CLIP's cap, or a started-from model's own larger scale (SigLIP learned ~117 uncapped)
    start_scale = getattr(model, "logit_scale", None)
    max_logit_scale = MAX_LOGIT_SCALE
    if isinstance(start_scale, torch.Tensor) and _init_from(exp):
        max_logit_scale = max(MAX_LOGIT_SCALE, float(start_scale.detach()))
    loss_fn = parts.build_loss(exp.loss, model).to(device)
    D.broadcast_parameters([model, loss_fn])
    model.train()
    loss_fn.train()
    train_data = build_train_loader(parts, exp.data, env, seed)
    val_batches = build_val_loader(parts, exp.data, env) if cfg.val_every_epoch > 0 else None
    make_micro = MicroBatchMaker(model, device)
    local_heads = LocalHeadMonitor(model)
    preprocessing = model_preprocessing(exp.data, env)
    skips = SkipTracker(train_data, val_batches)

    # -- optimizer and schedule ----------------------------------------------------------
    batches_per_epoch = train_data.sampler.num_batches()
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    params = [p for _, p in named if p.requires_grad]
    optimizer = build_optimizer(named, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.precision == "fp16")
    autocast = _autocast(cfg.precision, device)
    fp = fingerprint(exp.raw, model, loss_fn)  # the sections as written, as checkpoints always recorded them

    # -- resume --------------------------------------------------------------------------
    state = TrainState(global_batch_size=train_data.sampler.global_batch_size)
    last_dir, best_dir = out / "checkpoints" / "last", out / "checkpoints" / "best"
    resumed_at: int | None = None
    if env.is_main:
        # a kill while a checkpoint or the model was being replaced leaves the newest complete
        # version in a staging folder: put it back in place (and drop stale staging) first
        for folder in (last_dir, best_dir, out / "model"):
            recover_dir(folder)
    D.barrier()
    resume_from = last_dir if last_dir.is_dir() else best_dir if best_dir.is_dir() else None
    if resume and resume_from is not None:
        if resume_from == best_dir:
            say(env, f"--resume: no checkpoint in {last_dir}; resuming from {best_dir}")
        doc = load_checkpoint(resume_from, model=model, loss_fn=loss_fn, optimizer=optimizer,
                              scheduler=scheduler, scaler=scaler, fingerprint=fp)
        state = TrainState.from_json(doc["trainer"])
        before = doc["scheduler"].get("lr_lambdas", [{}])[0] or {}
        scheduler = build_scheduler(optimizer, cfg, total_steps, start_step=state.step)
        after = scheduler.lr_lambdas[0].__dict__
        if before and (before != after or doc["scheduler"].get("base_lrs", [cfg.lr])[0] != cfg.lr):
            say(env, f"learning-rate schedule changed on resume: {before} -> {after}, peak lr {cfg.lr}")
        state.batch_in_epoch = train_data.position_from(state)
        rng = doc["rng"]
        restore_rng(rng[env.rank % len(rng)], device)
        resumed_at = state.step
        say(env, f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}, "
                  f"batch {state.batch_in_epoch} of {batches_per_epoch})")
    else:
        if resume:  # nothing complete to resume from (recover_dir kept any complete version)
            say(env, f"--resume: no checkpoint in {last_dir.parent}; starting fresh")
        elif last_dir.is_dir():
            say(env, f"{out} holds an earlier run; starting fresh over it (use --resume to continue it)")
        if env.is_main:  # a fresh run must not inherit the checkpoints or events of an earlier one
            for stale in ("checkpoints", "tensorboard"):
                shutil.rmtree(out / stale, ignore_errors=True)
            (out / "nonfinite.json").unlink(missing_ok=True)
        D.barrier()
        seed_everything(seed + env.rank)  # dropout/augmentation differ between ranks
    logger = MetricsLogger(out, enabled=env.is_main, resume_step=resumed_at)

    def save(path: Path) -> None:
        rngs = D.all_gather_objects(capture_rng(device))  # every rank's generators
        if env.is_main:
            save_checkpoint(path, model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, trainer_state=state.to_json(), rng=rngs, fingerprint=fp)
        D.barrier()

    def save_model(metrics: dict[str, float] | None = None) -> None:
        if env.is_main:
            card = model_card(exp, cfg, state, metrics, len(train_data.dataset),
                               train_data.sampler.global_batch_size * cfg.accum_steps, device)
            params = inspect.signature(model.save_pretrained).parameters
            kwargs: dict[str, Any] = {}
            if "card" in params:
                kwargs["card"] = card
            if "training" in params:
                kwargs["training"] = local_heads.record(exp.loss)
            with atomic_path(out / "model") as tmp:
                model.save_pretrained(tmp, **kwargs)
                if preprocessing is not None:
                    preprocessing.save(tmp)  # what inference needs to prepare a file as training did

    def end_of_epoch() -> None:
        """Validation, best model, history."""
        row: dict[str, Any] = {"epoch": state.epoch, "step": state.step,
                               "train_loss": state.epoch_loss_sum / max(1, state.epoch_steps)}
        due = val_batches is not None and (state.epoch + 1) % cfg.val_every_epoch == 0
        metrics = validate(model, val_batches, device, autocast, gather=D.all_gather_objects) \
            if due and val_batches is not None else {}
        metrics = D.all_gather_objects(metrics)[0]  # rank 0's figures decide the best model on every rank
        row.update(metrics)
        state.history.append(row)
        if metrics:
            logger.log(state.step, state.epoch, "val", metrics)
            say(env, f"epoch {state.epoch} val: " + ", ".join(
                f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith(("i2t_R", "mean"))))
        value = metrics.get(cfg.monitor)
        if value is not None and math.isfinite(value) and (state.best is None or value > state.best):
            state.best, state.best_step = value, state.step
            save_model(metrics)
            save(best_dir)
        elif val_batches is None:
            save_model()  # nothing to select on: the model is the last one

    # -- the loop ------------------------------------------------------------------------
    from medvl.progress import progress

    bar = progress(total=total_steps, initial=state.step, disable=not (env.is_main and cfg.progress),
               desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    window = {"time": 0.0, "wait": 0.0, "samples": 0}
    max_steps = cfg.max_steps
    done = (lambda: state.step >= max_steps) if max_steps else (lambda: state.epoch >= cfg.epochs)
    stop = StopRequest()
    try:
        stop.install()
        while not done():
            for group, plan, wait_s, t0 in train_data.epoch(state.epoch, state.batch_in_epoch, cfg.accum_steps):
                state.batch_in_epoch += len(group)
                skips.check(group, plan)
                micro = [m for m in (make_micro(b) for b in group) if m is not None]
                if D.any_rank(not micro, device):
                    state.skipped_steps += 1  # every study of the step was unreadable on some rank
                    continue

                step_loss = contrastive_step(model, loss_fn, micro, autocast=autocast, scale=scaler.scale,
                                             epoch=state.epoch)
                terms = _scalars(step_loss.terms)
                if D.any_rank(not all(math.isfinite(v) for v in terms.values()), device):
                    state.batch_in_epoch -= len(group)  # resume retries this step
                    stop_nonfinite(out, env, state, terms, micro, "loss", save, last_dir)
                step_loss.backward()
                average_gradients(params)  # grad stays None where no rank produced one
                local_heads.observe()
                grad_norm = unscale_and_clip(params, optimizer, scaler, cfg.grad_clip)
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    optimizer.zero_grad(set_to_none=True)
                    state.batch_in_epoch -= len(group)
                    stop_nonfinite(out, env, state, {**terms, "grad_norm": grad_norm}, micro, "gradient",
                                    save, last_dir)
                lr = step_optimizer(optimizer, scaler, scheduler)
                if cfg.clamp_logit_scale and isinstance(getattr(model, "logit_scale", None), torch.Tensor):
                    with torch.no_grad():
                        model.logit_scale.clamp_(0.0, max_logit_scale)

                state.step += 1
                n_step = sum(m.size for m in micro)
                mean = D.all_reduce_mean({"loss": terms["loss"], "n": float(n_step)}, device)  # over ranks
                state.samples += round(mean["n"] * env.world_size)
                state.epoch_loss_sum += mean["loss"]
                state.epoch_steps += 1
                window["time"] += time.perf_counter() - t0
                window["wait"] += wait_s
                window["samples"] += mean["n"] * env.world_size
                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    values = D.all_reduce_mean(terms, device)
                    values.update(lr=lr, grad_norm=grad_norm,
                                  samples_per_s=window["samples"] / max(window["time"], 1e-9),
                                  data_wait_frac=window["wait"] / max(window["time"], 1e-9))
                    if isinstance(getattr(model, "logit_scale", None), torch.Tensor):
                        values["logit_scale"] = float(model.logit_scale.detach().exp())
                    logger.log(state.step, state.epoch, "train", values)
                    window = {"time": 0.0, "wait": 0.0, "samples": 0}
                bar.set_postfix(loss=f"{terms['loss']:.4f}", epoch=state.epoch, refresh=False)
                bar.update(1)
                if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
                    save(last_dir)
                if on_step is not None:
                    on_step(state)
                if D.any_rank(stop.received is not None, device):
                    save(last_dir)
                    skips.write(out, env)
                    raise TrainingError(
                        f"stopped by {stop.received or 'a signal on another rank'} after step {state.step}; "
                        f"the state is saved in {last_dir}", path=out, field="signal",
                        expected="continue with --resume",
                    )
                if cfg.max_steps and state.step >= cfg.max_steps:
                    break
            else:  # the epoch ran to its end
                if state.epoch_steps == 0:
                    raise TrainingError(
                        f"epoch {state.epoch} had no usable batch: every study was skipped",
                        path=out / "skipped.jsonl", expected="readable studies in the train split",
                    )
                end_of_epoch()
                state.epoch += 1
                state.batch_in_epoch = state.epoch_steps = 0
                state.epoch_loss_sum = 0.0
                save(last_dir)
                skips.write(out, env)
                continue
            break  # max_steps reached inside the epoch

        evaluated = bool(state.history) and state.history[-1]["step"] == state.step
        if state.batch_in_epoch > 0 and not evaluated:  # stopped mid-epoch (max_steps): validate, save
            end_of_epoch()
            save(last_dir)
        if state.best is None:  # no validation ever picked a model: the model is the last one
            save_model()
        if cfg.fit_inference and preprocessing is not None:
            fit_inference(out, exp.data, seed, env, cfg.progress)
        skipped = skips.write(out, env)
    finally:
        stop.restore()
        bar.close()
        logger.close()
    return TrainResult(model_dir=out / "model", history=state.history, seconds=time.perf_counter() - t_start,
                       skipped=skipped, steps=state.step, out_dir=out)


def _init_from(exp: Experiment) -> str | None:
    """The model directory training starts from (``model.init_from``), if any."""
    model = exp.model
    start = model.get("init_from") if isinstance(model, dict) else getattr(model, "init_from", None)
    return str(start) if start else None


def _with_start_preprocessing(exp: Experiment) -> Experiment:
    """With ``model.init_from``, train on the starting model's own preprocessing.

    The directory's ``preprocessing.json`` (an imported model's: its grid, crop, mean/std)
    fills the ``data`` section; an explicit setting that contradicts it is a
    :class:`ConfigError` naming the field, so a fine-tuned model never silently sees
    inputs its weights were not made for.
    """
    import dataclasses

    start = _init_from(exp)
    if not start or not isinstance(exp.data, DataConfig) or not (Path(start) / "preprocessing.json").is_file():
        return exp
    from medvl.inference.preprocessing import Preprocessing

    # the data section as written: its keys are the user's explicit settings
    data = Preprocessing.load(start).apply_to(exp.raw.get("data") or {},
                                              source=str(Path(start) / "preprocessing.json"))
    return dataclasses.replace(exp, data=data)


def _scalars(terms: dict[str, Any]) -> dict[str, float]:
    """The loss terms as floats, checking the loss kept its side of the contract."""
    if "loss" not in terms:
        raise TrainingError("the loss returned no total under 'loss'", field="loss",
                            expected="a dict of named scalar terms with the weighted total under 'loss'")
    out = {}
    for k, v in terms.items():
        if isinstance(v, torch.Tensor) and v.numel() != 1:
            raise TrainingError(f"loss term {k!r} has shape {tuple(v.shape)}", field=f"loss.{k}",
                                expected="a scalar")
        out[k] = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
    return out

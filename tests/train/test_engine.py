"""The engine end to end on fakes: outputs, resume exactness, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fakes import FakeModel, components, tiny_config

from medvl.errors import CheckpointError, ConfigError, TrainingError
from medvl.train import train


def _rows(out: Path, split: str = "train") -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def test_run_writes_every_output_and_learns(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny_config(epochs=3), out, components=components())

    # 24 studies / batch 4 = 6 steps per epoch
    assert result.steps == 18
    assert result.model_dir == out / "model"
    for name in ("config.yaml", "run.json", "metrics.csv", "skipped.jsonl",
                 "checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors",
                 "checkpoints/last/trainer_state.json", "checkpoints/best/model.safetensors"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "run.json").read_text())["seed"] == 3

    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 19))
    for term in ("instance_loss", "token_loss", "loss", "lr", "grad_norm", "samples_per_s", "data_wait_frac"):
        assert all(r[term] != "" for r in rows), term
    # the total is the sum of the weighted terms the loss reported
    r = rows[0]
    assert float(r["loss"]) == pytest.approx(float(r["instance_loss"]) + float(r["token_loss"]), rel=1e-6)

    # one validation per epoch with image->report recall; the problem is learnable
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert all(0.0 <= h["i2t_R@1"] <= 1.0 for h in result.history)
    first, last = float(rows[0]["instance_loss"]), float(rows[-1]["instance_loss"])
    assert last < 0.5 * first
    assert result.history[-1]["i2t_R@5"] > 5 / 8 - 1e-9  # above chance (5 of 8 candidates)

    # the saved model is the best epoch's and loads back
    best = max(result.history, key=lambda h: h["mean_recall"])
    state = json.loads((out / "checkpoints/best/trainer_state.json").read_text())["trainer"]
    assert state["best"] == pytest.approx(best["mean_recall"])
    loaded = FakeModel.from_pretrained(out / "model")
    saved = load_file(out / "checkpoints/best/model.safetensors")
    assert torch.equal(loaded.image_proj.weight, saved["image_proj.weight"])


def test_schedule_follows_warmup_and_cosine(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(epochs=1, warmup_steps=2, lr=0.01), out, components=components())
    lrs = [float(r["lr"]) for r in _rows(out)]
    total, warm = 6, 2
    expected = [0.01 * (s / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
                for s in range(total)]
    assert lrs == pytest.approx(expected)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("accum", [1, 2])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path: Path, accum: int) -> None:
    """Dropout on, gradient cache on (accum 2): weights and loss trace must match exactly."""
    cfg = tiny_config(epochs=2, accum_steps=accum, checkpoint_every_steps=2)
    cfg["model"]["dropout"] = 0.3
    full = tmp_path / "full"
    train(cfg, full, components=components())

    part = tmp_path / "part"
    stop_at = 5 if accum == 1 else 2  # mid-epoch (6 resp. 3 steps per epoch), after a checkpoint

    def crash(state):
        if state.step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, part, components=components(), on_step=crash)
    saved = json.loads((part / "checkpoints/last/trainer_state.json").read_text())["trainer"]
    assert saved["step"] == 4 if accum == 1 else 2
    assert saved["batch_in_epoch"] > 0  # the interruption is in the middle of an epoch

    result = train(cfg, part, components=components(), resume=True)
    assert result.steps == (12 if accum == 1 else 6)
    a, b = _weights(full / "checkpoints/last"), _weights(part / "checkpoints/last")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in _rows(full)] == [r["loss"] for r in _rows(part)]
    assert [r["step"] for r in _rows(part)] == [str(s) for s in range(1, result.steps + 1)]
    full_hist = json.loads((full / "checkpoints/last/trainer_state.json").read_text())["trainer"]["history"]
    assert full_hist == result.history  # validation metrics and mean epoch losses too


def test_gradient_cache_keeps_the_whole_effective_batch_as_negatives(tmp_path: Path) -> None:
    """Two micro-batches of 4 with the feature cache train exactly like one batch of 8."""
    big = tiny_config(epochs=1)
    big["data"]["batch_size"] = 8
    train(big, tmp_path / "big", components=components())
    acc = tiny_config(epochs=1, accum_steps=2)
    train(acc, tmp_path / "acc", components=components())
    a, b = _weights(tmp_path / "big/checkpoints/last"), _weights(tmp_path / "acc/checkpoints/last")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [float(r["loss"]) for r in _rows(tmp_path / "big")]
    lb = [float(r["loss"]) for r in _rows(tmp_path / "acc")]
    assert la == pytest.approx(lb, rel=1e-5)


def test_nonfinite_loss_stops_with_step_studies_and_last_good_state(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2)
    cfg["data"]["nan_studies"] = ["train017"]
    out = tmp_path / "run"
    steps_seen = []
    with pytest.raises(TrainingError) as info:
        train(cfg, out, components=components(), on_step=lambda s: steps_seen.append(s.step))
    msg = str(info.value)
    bad_step = len(steps_seen) + 1
    assert f"step {bad_step}" in msg and "train017" in msg and "loss" in msg
    report = json.loads((out / "nonfinite.json").read_text())
    assert report["step"] == bad_step and "train017" in report["study_ids"]
    # the checkpoint holds the state after the last good step: finite, and resuming retries the bad step
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())["trainer"]
    assert state["step"] == bad_step - 1
    assert all(torch.isfinite(t).all() for t in _weights(out / "checkpoints/last").values())
    with pytest.raises(TrainingError, match=f"step {bad_step}"):
        train(cfg, out, components=components(), resume=True)


def test_unreadable_studies_and_an_empty_batch_are_skipped_and_recorded(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    cfg["data"]["batch_size"] = 8
    cfg["data"]["n_train"] = 32
    # the sampler's first batch of epoch 0 (seeded order): make all of it unreadable
    from medvl.train.sampler import EpochBatchSampler

    s = EpochBatchSampler(32, 8, seed=3)
    first = s.epoch_batches()[0]
    bad = [f"train{i:03d}" for i in first] + ["train031" if 31 not in first else "train030"]
    cfg["data"]["unreadable"] = [*bad, "val002"]
    bad.append("val002")  # a val study that cannot be read is listed too
    out = tmp_path / "run"
    result = train(cfg, out, components=components())
    assert result.steps == 3  # 4 batches, the empty one skipped
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())["trainer"]
    assert state["skipped_steps"] == 1
    recorded = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["study_id"] for r in recorded) == sorted(bad)
    assert sorted(r["study_id"] for r in result.skipped) == sorted(bad)
    assert all(r["error"] for r in recorded)


def test_resume_with_a_different_model_config_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(epochs=1), out, components=components())
    cfg = tiny_config(epochs=2)
    cfg["model"]["hidden"] = 32
    with pytest.raises(CheckpointError) as info:
        train(cfg, out, components=components(), resume=True)
    assert "model.hidden" in str(info.value) and "16" in str(info.value) and "32" in str(info.value)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    result = train(tiny_config(epochs=1), tmp_path / "run", components=components(), resume=True)
    assert result.steps == 6


def test_bad_train_section_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.accum_steps"):
        train(tiny_config(accum_steps=0), tmp_path / "a", components=components())
    with pytest.raises(ConfigError, match="train.learning_rate"):
        train(tiny_config(learning_rate=0.1), tmp_path / "b", components=components())
    with pytest.raises(ConfigError, match="train.monitor"):
        train(tiny_config(monitor="auroc"), tmp_path / "m", components=components())
    cfg = tiny_config()
    del cfg["data"]["manifest"]
    with pytest.raises(ConfigError, match="data.manifest"):
        train(cfg, tmp_path / "c", components=components())


def test_max_steps_overrides_epochs_and_cpu_ignores_bf16(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    result = train(tiny_config(epochs=1, max_steps=8, precision="bf16"), out, components=components())
    assert result.steps == 8
    assert "fp32" in capsys.readouterr().err
    assert len(result.history) == 2  # end of epoch 0 and the partial epoch 1
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_can_extend_a_finished_run_with_a_longer_schedule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(epochs=1, warmup_steps=0), out, components=components())
    result = train(tiny_config(epochs=2, warmup_steps=0), out, components=components(), resume=True)
    assert result.steps == 12
    lrs = [float(r["lr"]) for r in _rows(out)]
    # the second epoch follows the 12-step cosine, not the finished 6-step one (which ends at 0)
    assert lrs[6] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 6 / 12)))


def test_resume_with_another_batch_size_keeps_the_samples_seen(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"

    def crash(state):
        if state.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(epochs=1, checkpoint_every_steps=2), out, components=components(), on_step=crash)
    cfg = tiny_config(epochs=1)
    cfg["data"]["batch_size"] = 8  # 16 of 24 studies seen = 2 batches of 8
    result = train(cfg, out, components=components(), resume=True)
    assert "batch 2 of 3" in capsys.readouterr().err
    assert result.steps == 5  # 4 steps of 4, then the last batch of 8


def test_sigterm_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    import os
    import signal

    cfg = tiny_config(epochs=2)
    cfg["model"]["dropout"] = 0.3
    train(cfg, tmp_path / "full", components=components())

    def preempt(state):
        if state.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before killing a job

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="SIGTERM after step 3") as info:
        train(cfg, out, components=components(), on_step=preempt)
    assert "--resume" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    train(cfg, out, components=components(), resume=True)
    a, b = _weights(tmp_path / "full/checkpoints/last"), _weights(out / "checkpoints/last")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_fresh_run_over_an_earlier_one_inherits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(epochs=1)
    cfg["data"]["nan_studies"] = ["train005"]
    with pytest.raises(TrainingError):
        train(cfg, out, components=components())
    assert (out / "nonfinite.json").is_file()
    # a new run (no --resume) without validation: its model is its own last state
    result = train(tiny_config(epochs=1, val_every_epoch=0), out, components=components())
    assert not (out / "nonfinite.json").exists() and not (out / "checkpoints/best").exists()
    assert len(list((out / "tensorboard").glob("events.*"))) == 1
    saved = _weights(out / "checkpoints/last")
    assert torch.equal(FakeModel.from_pretrained(result.model_dir).image_proj.weight, saved["image_proj.weight"])


def test_resuming_a_run_that_already_reached_max_steps_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train(tiny_config(max_steps=8), out, components=components())
    rows = (out / "metrics.csv").read_text()
    again = train(tiny_config(max_steps=8), out, components=components(), resume=True)
    assert again.steps == 8 and again.history == first.history
    assert (out / "metrics.csv").read_text() == rows


def test_a_loss_without_a_total_is_a_clear_error(tmp_path: Path) -> None:
    from train_fakes import FakeLoss

    from medvl.train import Components

    class NoTotal(FakeLoss):
        def forward(self, *args, **kwargs):
            terms = super().forward(*args, **kwargs)
            del terms["loss"]
            return terms

    parts = components()
    parts = Components(parts.build_model, lambda cfg, model: NoTotal(cfg), parts.build_dataloader,
                       raw_sections=parts.raw_sections)
    with pytest.raises(TrainingError, match="no total under 'loss'"):
        train(tiny_config(), tmp_path / "run", components=parts)

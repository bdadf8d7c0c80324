"""Two gloo processes under torchrun train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fakes import components

from medvl.train import train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dist_worker import dist_config, frozen_prototype_config, real_loss_components  # noqa: E402  (needs sys.path above)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(HERE.parents[1]), os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "dist_worker.py"), *args],
        check=False, env=env, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.slow
def test_two_process_run_with_resume_matches_one_process(tmp_path: Path) -> None:
    # one process, batch 8 = the two ranks' 4 + 4
    single = dist_config()
    single["data"]["batch_size"] = 8
    train(single, tmp_path / "single", components=components())

    # two processes, stopped after step 3 (of 4), then resumed from the step-3 checkpoint
    out = tmp_path / "ddp"
    first = _torchrun(str(out), "3")
    assert first.returncode != 0, first.stdout + first.stderr
    assert (out / "checkpoints/last/trainer_state.json").is_file()
    second = _torchrun(str(out), "-", "--resume")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed" in second.stderr and second.stdout.count("rank done steps=4") == 2

    # validation is sharded over the ranks and gathered: same figures as one process
    hist = [json.loads((d / "checkpoints/last/trainer_state.json").read_text())["trainer"]["history"]
            for d in (tmp_path / "single", out)]
    assert len(hist[0]) == len(hist[1]) == 2
    for one, two in zip(*hist, strict=True):
        assert one["n"] == two["n"] == 8
        assert one["i2t_R@5"] == two["i2t_R@5"] and one["t2i_R@1"] == two["t2i_R@1"]
        assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)

    a = load_file(tmp_path / "single/checkpoints/last/model.safetensors")
    b = load_file(out / "checkpoints/last/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_two_processes_with_frozen_prototypes_match_one_process(tmp_path: Path) -> None:
    """In epoch 0 no rank has a gradient for the frozen prototypes (nor for logit_scale at a
    fixed temperature). One process leaves them out of AdamW's step; two processes must too:
    zero-filled gradients would advance Adam's step count (and decay them), so the updates
    after unfreezing, and from there the whole model, would differ."""
    single = frozen_prototype_config()
    single["data"]["batch_size"] = 8
    train(single, tmp_path / "single", components=real_loss_components())
    out = tmp_path / "ddp"
    run = _torchrun(str(out), "-", "--frozen-prototypes")
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("model.safetensors", "loss.safetensors"):
        a = load_file(tmp_path / "single/checkpoints/last" / name)
        b = load_file(out / "checkpoints/last" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")

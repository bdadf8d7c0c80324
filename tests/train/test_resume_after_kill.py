"""``train --resume`` after a process was SIGKILLed while replacing ``checkpoints/last``.

The old replacement renamed ``last`` away and the new version in with two renames; a
kill between them made ``--resume`` report "no checkpoint", start fresh and delete
``checkpoints/`` with the complete old checkpoint in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_fakes import components, tiny_config

from medvl.train import train

# Child: replace TARGET by a copy of SOURCE with medvl.atomic and SIGKILL itself at STEP.
CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
import medvl.atomic as atomic

target, source, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real_replace = os.replace
def replace(a, b):
    real_replace(a, b)
    if step == "parked" and Path(a) == target:  # 'last' renamed away, the new version not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with atomic.atomic_path(target) as tmp:
    if step == "writing":  # half of the new checkpoint written
        tmp.mkdir()
        shutil.copy(source / "model.safetensors", tmp)
        os.kill(os.getpid(), signal.SIGKILL)
    shutil.copytree(source, tmp)
"""


def _step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["trainer"]["step"]


@pytest.mark.parametrize(("step", "resumed_at"), [("writing", 4), ("parked", 12)])
def test_resume_finds_the_newest_complete_checkpoint_after_a_kill(tmp_path: Path, step: str, resumed_at: int) -> None:
    cfg = tiny_config(epochs=2, checkpoint_every_steps=2)
    full = tmp_path / "full"
    train(cfg, full, components=components())  # 12 steps: a complete later checkpoint to copy in

    run = tmp_path / "run"

    def crash(state):
        if state.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, components=components(), on_step=crash)
    last = run / "checkpoints" / "last"
    assert _step_of(last) == 4

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(last), str(full / "checkpoints/last"), step],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if step == "parked":
        assert not last.exists()  # what the old engine took for "no checkpoint"

    steps: list[int] = []
    result = train(cfg, run, components=components(), resume=True, on_step=lambda s: steps.append(s.step))
    assert result.steps == 12
    assert steps == list(range(resumed_at + 1, 13))  # resumed, not retrained from step 0
    assert _step_of(last) == 12
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == (["last"] if step == "parked" else ["best", "last"])  # no staging folder left

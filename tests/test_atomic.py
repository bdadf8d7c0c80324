"""Folder replacement killed (SIGKILL) at every step: a complete version always survives.

A child process replaces a folder with :func:`medvl.atomic.atomic_path` and kills
itself at one step of the replacement; the parent then checks what
:func:`medvl.atomic.recover_dir` (what ``train --resume`` runs first) makes of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medvl.atomic import atomic_path, recover_dir, write_text_atomic

# Runs in the child: write version NEW of TARGET (three files) and SIGKILL itself at STEP.
CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
import medvl.atomic as atomic

target, new, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

# renames of a replacement: 1 marks the new version complete, 2 parks the old one, 3 puts the new one in place
AFTER_RENAME = {"marked": 1, "parked": 2, "renamed": 3}
if step in AFTER_RENAME:
    real_replace, calls = os.replace, []
    def replace(a, b):
        real_replace(a, b)
        calls.append(1)
        if len(calls) == AFTER_RENAME[step]:
            die()
    os.replace = replace
if step == "cleanup":  # deleting the staging folder: the parked old version half gone
    def rmtree(path, ignore_errors=False):
        old = Path(path) / atomic.OLD_NAME
        for f in sorted(old.iterdir())[:2]:
            f.unlink()
        die()
    atomic.shutil.rmtree = rmtree

with atomic.atomic_path(target) as tmp:
    tmp.mkdir()
    for name in ("a.bin", "b.bin", "state.json"):
        (tmp / name).write_text(new * 1000)
        if step == "writing" and name == "b.bin":
            die()
print("finished")
"""

STEPS = {  # step -> the version recover_dir must find
    "writing": "old",   # the new version is incomplete: the old one stays
    "marked": "new",    # complete but not yet in place: it is the newest complete version
    "parked": "new",    # the target is gone for a moment: both versions are in the staging folder
    "renamed": "new",   # in place; the old one waits in the staging folder
    "cleanup": "new",   # the old one half deleted
    "none": "new",      # not killed
}


def _write_version(folder: Path, version: str) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name in ("a.bin", "b.bin", "state.json"):
            (tmp / name).write_text(version * 1000)


def _version(folder: Path) -> str:
    """The version a folder holds; fails unless all three files are complete and agree."""
    texts = {name: (folder / name).read_text() for name in ("a.bin", "b.bin", "state.json")}
    versions = {t[:3] for t in texts.values()}
    assert len(versions) == 1 and all(len(t) == 3000 for t in texts.values()), texts.keys()
    return versions.pop()


def _run_child(target: Path, new: str, step: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", CHILD, str(target), new, step], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("step", list(STEPS))
def test_replacement_killed_at_each_step_keeps_the_newest_complete_version(tmp_path: Path, step: str) -> None:
    target = tmp_path / "checkpoints" / "last"
    _write_version(target, "old")
    proc = _run_child(target, "new", step)
    if step == "none":
        assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected = "old" if STEPS[step] == "old" else "new"

    assert recover_dir(target) == target
    assert _version(target) == expected
    # nothing left but the one folder: stale staging is gone, the superseded version too
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]
    # and the next save works normally on top of what was recovered
    _write_version(target, "nxt")
    assert _version(target) == "nxt"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


@pytest.mark.parametrize("step", ["writing", "marked"])
def test_first_ever_write_killed_leaves_nothing_or_the_complete_version(tmp_path: Path, step: str) -> None:
    target = tmp_path / "model"
    proc = _run_child(target, "new", step)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    found = recover_dir(target)
    if step == "writing":
        assert found is None and not target.exists()
    else:
        assert found == target and _version(target) == "new"
    assert [p.name for p in tmp_path.iterdir()] == (["model"] if found else [])


def test_next_write_recovers_first_so_a_kill_never_costs_a_version(tmp_path: Path) -> None:
    """Killed with the target parked: the next save (no explicit recovery) still builds on it."""
    target = tmp_path / "last"
    _write_version(target, "old")
    assert _run_child(target, "new", "parked").returncode == -signal.SIGKILL
    assert not target.exists()  # the moment the old code turned into "no checkpoint"
    _write_version(target, "nxt")
    assert _version(target) == "nxt"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin", "state.json"]  # nothing added


def test_previous_scheme_leftovers_are_recovered(tmp_path: Path) -> None:
    """Folders left by the two-rename scheme: a parked ``.last.old-PID`` and a ``.last.XXXXXXXX`` staging."""
    target = tmp_path / "last"
    _write_version(target, "old")
    os.replace(target, tmp_path / ".last.old-4242")
    (tmp_path / ".last.abcd1234" / "last").mkdir(parents=True)
    (tmp_path / ".last.abcd1234" / "last" / "a.bin").write_text("par")
    assert recover_dir(target) == target and _version(target) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_failed_body_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "last"
    _write_version(target, "old")

    def fail() -> None:
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "a.bin").write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fail()
    assert _version(target) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_file_writes_leave_other_writers_staging_alone(tmp_path: Path) -> None:
    """A file write never deletes staging folders: another process may be writing the same name."""
    busy = tmp_path / ".cache.bin.staging-zzzz"
    busy.mkdir()
    (busy / "cache.bin").write_text("in progress")
    write_text_atomic(tmp_path / "cache.bin", "done")
    assert (tmp_path / "cache.bin").read_text() == "done"
    assert (busy / "cache.bin").read_text() == "in progress"

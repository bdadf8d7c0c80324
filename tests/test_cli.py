"""The medvl command: bad input gives one clear line and exit code 2, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medvl.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_subcommand_has_help(capsys) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: medvl " + name in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["synth", "--out", "{tmp}/c", "--n-cxr", "-3"], "n_cxr"),
        (["synth", "--n-cxr", "2"], "--out"),
        (["train", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
        (["train", "--config", "{repo}/configs/tiny.yaml", "--out", "{tmp}/r", "model.image.name=vgg99",
          "data.manifest={tmp}/m.jsonl"], "vgg99"),
        (["train", "--config", "{repo}/configs/tiny.yaml", "--out", "{tmp}/r", "train.epoch=3",
          "data.manifest={tmp}/m.jsonl"], "train.epoch"),
        (["validate", "{tmp}/m.jsonl"], "missing.dcm"),
        (["index", "search", "{tmp}/no_index", "--text", "effusion"], "no_index"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2(tmp_path, monkeypatch, capsys, argv, needle) -> None:
    row = {"study_id": "s1", "patient_id": "p1", "split": "train", "modality": "CR", "dims": 2,
           "image": "missing.dcm", "report": {"findings": "Clear lungs."}, "labels": {}}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    args = [a.format(tmp=tmp_path, repo=REPO) for a in argv]
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert needle in captured.out + err
    if err:  # commands that fail report one line; `validate` reports in its summary table instead
        assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_console_script_reports_errors_without_traceback(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medvl.cli", "validate", str(tmp_path / "absent.jsonl")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "absent.jsonl" in proc.stderr

"""The medvl command: bad input gives one clear line and exit code 2, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

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


CT = str(get_testdata_file("CT_small.dcm", download=False))


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "{repo}/configs/tiny.yaml", "--out", "{file}"],
        ["eval", "--model", "{tmp}/model", "--manifest", "{tmp}/m.jsonl", "--out", "{file}"],
        ["index", "build", "--model", "{tmp}/model", "--manifest", "{tmp}/m.jsonl", "--out", "{file}"],
        ["deid", CT, "{file}"],
        ["synth", "--out", "{file}/corpus", "--n-cxr", "2", "--n-ct", "0"],
        ["model", "init", "{repo}/configs/tiny.yaml", "--out", "{file}"],
    ],
    ids=["train", "eval", "index-build", "deid", "synth", "model-init"],
)
def test_output_path_that_is_a_file_is_one_line_exit_2(tmp_path, capsys, argv) -> None:
    """Before, these ran (some for minutes) and ended in a FileExistsError/NotADirectoryError traceback."""
    (tmp_path / "taken").write_text("a file the user keeps")
    args = [a.format(tmp=tmp_path, repo=REPO, file=tmp_path / "taken") for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0] and str(tmp_path / "taken") in err[0]
    assert (tmp_path / "taken").read_text() == "a file the user keeps"


def test_validate_fails_on_an_empty_manifest(tmp_path, capsys) -> None:
    (tmp_path / "m.jsonl").write_text("\n\n")
    assert main(["validate", str(tmp_path / "m.jsonl")]) == 2
    assert "no rows" in capsys.readouterr().out


def test_model_init_with_an_empty_config_refuses_and_with_an_empty_section_says_so(tmp_path, capsys) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert main(["model", "init", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert "no model section" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    (tmp_path / "defaults.yaml").write_text("model: {}\n")
    assert main(["model", "init", str(tmp_path / "defaults.yaml"), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "every setting is the default" in out and "image encoder" in out
    assert (tmp_path / "m" / "config.json").is_file()


def test_an_unforeseen_file_system_error_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import medvl.data.validate as validate

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.jsonl"))

    monkeypatch.setattr(validate, "validate_manifest", refuse)
    assert main(["validate", str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medvl validate: error: Permission denied: {tmp_path / 'm.jsonl'}"]

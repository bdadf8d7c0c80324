"""``medvl viewer`` builds the right ``streamlit run`` line and refuses bad arguments."""

from __future__ import annotations

import argparse
import sys

import pytest

from apps import command
from medvl.errors import CaseIndexError, ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_serves_locally_with_the_viewer_arguments(tmp_path):
    cmd = command.build_command(_args("--index", str(tmp_path), "--max-upload-mb", "50.5", "--port", "9000"))
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(command.VIEWER)]
    opts = dict(zip(cmd[5:cmd.index("--"):2], cmd[6:cmd.index("--"):2], strict=True))
    assert opts == {
        "--server.headless": "true",
        "--server.address": "127.0.0.1",
        "--server.port": "9000",
        "--server.maxUploadSize": "51",  # whole MB, never below the viewer's own limit
        "--browser.gatherUsageStats": "false",
        "--client.toolbarMode": "viewer",
    }
    assert cmd[cmd.index("--") + 1 :] == ["--index", str(tmp_path), "--k", "5", "--max-upload-mb", "50.5"]
    with_model = command.build_command(_args("--index", str(tmp_path), "--model", "m"))
    assert with_model[-2:] == ["--model", "m"]


def test_bad_arguments_are_medvl_errors(tmp_path):
    with pytest.raises(CaseIndexError, match="nope: index folder does not exist"):
        command.build_command(_args("--index", str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match=r"\[--port\]: must be positive"):
        command.build_command(_args("--index", str(tmp_path), "--port", "0"))


def test_run_calls_streamlit(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(command.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    assert command.run(_args("--index", str(tmp_path))) == 0
    assert seen and seen[0][3:5] == ["run", str(command.VIEWER)]

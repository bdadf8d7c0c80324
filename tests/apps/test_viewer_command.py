"""``medvl viewer`` builds the right ``streamlit run`` line and refuses bad arguments."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from medvl.errors import CaseIndexError, ConfigError
from medvl_viewer import command


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


def test_without_streamlit_run_says_which_extra_to_install(tmp_path, monkeypatch):
    real_find_spec = command.importlib.util.find_spec
    monkeypatch.setattr(
        command.importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(command.subprocess, "call", lambda cmd: pytest.fail("streamlit must not be started"))
    with pytest.raises(ConfigError, match=r"pip install 'medvl\[viewer\]'"):
        command.run(_args("--index", str(tmp_path)))


def _python(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter outside the checkout (so the repo folder is not on the path)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_cli_imports_the_viewer_only_when_medvl_viewer_runs(tmp_path):
    code = (
        "import contextlib, io, sys\n"
        "from medvl.cli import main\n"
        "for argv in (['--help'], ['synth', '--help'], ['viewer', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    print(argv[0], 'medvl_viewer.command' in sys.modules, 'streamlit' in sys.modules)\n"
    )
    assert _python(code, tmp_path).splitlines() == [
        "--help False False",
        "synth False False",
        "viewer True False",  # its arguments, and still no Streamlit until it serves
    ]


def test_no_top_level_apps_package_is_installed(tmp_path):
    # Another project's `apps` package must not be shadowed by (or shadow) the viewer.
    code = (
        "import importlib.util, medvl_viewer, medvl_viewer.uploads as u, medvl.errors as e\n"
        "print(importlib.util.find_spec('apps'))\n"
        "print(medvl_viewer.__name__, issubclass(u.UploadError, e.MedvlError), hasattr(e, 'UploadError'))\n"
    )
    assert _python(code, tmp_path).splitlines() == ["None", "medvl_viewer True False"]

"""``medvl viewer``: serve the Streamlit viewer on a case index.

A CLI subcommand module (``add_arguments(parser)``, ``run(args) -> int``) for
``medvl.cli.COMMANDS``. It runs ``streamlit run <this package>/app.py`` in a child
process with the headless, local-only settings of ``make viewer`` and the viewer's own
arguments after ``--``.

It imports nothing of the app (no Streamlit, no torch): ``medvl viewer --help`` stays
fast, and without the ``viewer`` extra ``run`` says what to install instead of failing
on an import.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from medvl.errors import CaseIndexError, ConfigError

VIEWER = Path(__file__).resolve().parent / "app.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl viewer``."""
    parser.add_argument("--index", required=True, help="case index folder (from `medvl index build`)")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index records)")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--address", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--k", type=int, default=5, help="results shown at first")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload")


def build_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args``.

    Raises:
        CaseIndexError: the index folder does not exist.
        ConfigError: a non-positive port, ``k`` or upload limit.
    """
    if not Path(args.index).is_dir():
        raise CaseIndexError("index folder does not exist", path=args.index, expected="a folder from `medvl index`")
    for name in ("port", "k", "max_upload_mb"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"must be positive, got {getattr(args, name)}", field=f"--{name.replace('_', '-')}")
    # Streamlit's own limit (whole MB) must not be below the viewer's, or it refuses first.
    server_mb = max(1, int(-(-args.max_upload_mb // 1)))
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(VIEWER),
        "--server.headless", "true",
        "--server.address", str(args.address),
        "--server.port", str(args.port),
        "--server.maxUploadSize", str(server_mb),
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",  # no deploy / clear-cache buttons for clinicians
        "--",
        "--index", str(args.index),
        "--k", str(args.k),
        "--max-upload-mb", str(args.max_upload_mb),
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", str(args.model)]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Serve the viewer until interrupted; returns Streamlit's exit code.

    Raises:
        ConfigError: Streamlit is not installed (the ``viewer`` extra is missing).
    """
    cmd = build_command(args)
    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError(
            "the viewer needs Streamlit, which is not installed",
            field="medvl viewer",
            expected="pip install 'medvl[viewer]'",
        )
    print(f"medvl viewer: serving on http://{args.address}:{args.port} (research use only; Ctrl+C stops)")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130

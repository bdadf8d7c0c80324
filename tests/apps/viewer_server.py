"""Start and stop a real ``streamlit run`` server for browser tests (bounded waits)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def viewer_command(index_dir: Path, model_dir: Path | None, port: int, max_upload_mb: float = 200.0) -> list[str]:
    """The ``medvl viewer`` command line (``medvl_viewer.command``) on ``port``, without file watching."""
    import argparse

    from medvl_viewer import command

    args = argparse.Namespace(index=str(index_dir), model=str(model_dir) if model_dir else None, port=port,
                              address="127.0.0.1", k=5, max_upload_mb=max_upload_mb)
    cmd = command.build_command(args)
    cut = cmd.index("--")
    return [*cmd[:cut], "--server.fileWatcherType", "none", *cmd[cut:]]


@contextlib.contextmanager
def streamlit_server(
    index_dir: Path, model_dir: Path | None, log_path: Path, *, env: dict[str, str] | None = None,
    start_timeout: float = 60, max_upload_mb: float = 200.0,
) -> Iterator[str]:
    """Serve the viewer as ``medvl viewer`` would, yield its URL; kill its process group on exit.

    Raises:
        RuntimeError: if the server does not answer its health check in ``start_timeout`` s
            (the server log is included).
    """
    port = free_port()
    cmd = viewer_command(index_dir, model_dir, port, max_upload_mb)
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()}")
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start in {start_timeout} s:\n{log_path.read_text()}")
                time.sleep(0.3)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

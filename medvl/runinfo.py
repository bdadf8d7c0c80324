"""What every run writes next to its outputs: resolved config, seed, versions, git revision."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medvl.atomic import write_text_atomic

PACKAGES = (
    "medvl", "torch", "monai", "transformers", "pydicom", "nibabel", "numpy",
    "scikit-learn", "safetensors", "peft", "faiss-cpu", "streamlit",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine results."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` if the tree has changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(out_dir: str | Path, config: dict[str, Any], seed: int | None, command: str) -> Path:
    """Write ``config.yaml`` (resolved) and ``run.json`` (seed, versions, git, host) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    info = {
        "command": command,
        "seed": seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "host": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2))
    return out / "run.json"

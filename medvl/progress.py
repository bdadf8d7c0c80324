"""Progress bars that stay readable in logs.

On a terminal a bar redraws as usual; when stderr is a file or a pipe (CI, ``nohup``,
``make demo > log``) each redraw would append a line, so updates are spaced out.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress(**kwargs: Any) -> tqdm:
    """A ``tqdm`` bar; off a terminal it refreshes at most every :data:`LOG_INTERVAL_S` seconds."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(**kwargs)

"""The viewer with the fake library behind it, for browser checks of the UI alone.

Run by ``streamlit run tests/apps/fake_viewer_app.py``; it swaps ``open_backend`` for the
fake and then runs ``apps/viewer.py`` unchanged.
"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (REPO, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from viewer_fakes import FakeBackend  # noqa: E402

from apps.viewer_lib import backend  # noqa: E402

backend.open_backend = lambda index_dir, model_dir: FakeBackend()
runpy.run_path(str(REPO / "apps" / "viewer.py"), run_name="__main__")

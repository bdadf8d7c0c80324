"""Notices an upload the browser refused by itself, so the page can say why in words.

Streamlit's uploader refuses a file over the server's upload limit in the browser: the
file never reaches the viewer, and all the user sees is a red chip carrying the file's
name with a hover tooltip. This invisible component watches for such a refused chip and
tells the server, which shows a plain message and replaces the uploader with a fresh
one (taking the file's name off the page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_JS = """
export default function(component) {
  const { setTriggerValue } = component;
  let sent = false;
  const check = () => {
    const refused = document.querySelector('[data-testid="stSidebar"] [data-testid="stFileChip"][aria-invalid="true"]');
    if (refused && !sent) { sent = true; setTriggerValue('refused', true); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body,
                   {subtree: true, childList: true, attributes: true, attributeFilter: ['aria-invalid']});
  check();
  return () => observer.disconnect();
}
"""

_component: Callable[..., Any] | None = None


def upload_guard(*, key: str, on_refused: Callable[[], None]) -> Any:
    """Mount the watcher (it draws nothing); ``on_refused`` runs when the browser refused a file."""
    global _component
    if _component is None:
        import streamlit as st

        _component = st.components.v2.component("medvl_viewer.upload_guard", js=_JS)
    return _component(key=key, on_refused_change=on_refused)

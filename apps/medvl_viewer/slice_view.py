"""The image on the page: a small Streamlit component that scrolls slices with the wheel and arrow keys.

The server renders one plane (window, heatmap overlay) as a PNG; the component shows it
and, over the image, turns mouse-wheel steps and arrow keys (Up/Right: next slice,
Down/Left: previous, PageUp/PageDown: 10 slices, Home/End: first/last) into a new slice
number. Only that number goes back to the server, which reruns the image's fragment,
not the page. The image takes keyboard focus when clicked or tabbed to.

The component's HTML carries no file name or path: its ``alt`` text says what is shown.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np

_JS = """
export default function(component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector('.medvl-slice-view');
  if (!root) {
    root = document.createElement('div');
    root.className = 'medvl-slice-view';
    root.innerHTML = '<img tabindex="0" data-testid="medvl-image"/>'
      + '<div class="medvl-slice-label" aria-live="polite"></div>';
    parentElement.appendChild(root);
  }
  const img = root.querySelector('img');
  const label = root.querySelector('.medvl-slice-label');
  if (img.getAttribute('src') !== data.src) { img.setAttribute('src', data.src); }
  img.setAttribute('alt', data.alt);
  img.dataset.slice = String(data.slice);
  img.dataset.slices = String(data.n);
  label.textContent = data.label || '';
  let current = data.slice;
  let timer = null;
  const send = (k) => {
    k = Math.max(0, Math.min(data.n - 1, k));
    if (k === current) { return; }
    current = k;
    label.textContent = 'Slice ' + (k + 1) + ' of ' + data.n + ' ...';
    // Several wheel steps in a burst go back as one rerun of the image.
    clearTimeout(timer);
    timer = setTimeout(() => setStateValue('slice', current), 60);
  };
  img.onwheel = (e) => {
    if (data.n <= 1) { return; }
    e.preventDefault();
    send(current + (e.deltaY > 0 ? 1 : -1));
  };
  img.onkeydown = (e) => {
    if (data.n <= 1) { return; }
    const step = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10}[e.key];
    if (step !== undefined) { e.preventDefault(); send(current + step); }
    else if (e.key === 'Home') { e.preventDefault(); send(0); }
    else if (e.key === 'End') { e.preventDefault(); send(data.n - 1); }
  };
  img.onclick = () => img.focus();
  return () => clearTimeout(timer);
}
"""

_CSS = """
.medvl-slice-view img { width: 100%; display: block; outline: none; border-radius: 2px; }
.medvl-slice-view img:focus { box-shadow: 0 0 0 2px var(--st-primary-color); }
.medvl-slice-view .medvl-slice-label { font-size: 0.85em; opacity: 0.8; min-height: 1.2em; }
"""

_component: Callable[..., Any] | None = None


def _mount() -> Callable[..., Any]:
    global _component
    if _component is None:
        import streamlit as st

        _component = st.components.v2.component("medvl_viewer.slice_view", js=_JS, css=_CSS)
    return _component


def png_data_uri(image: np.ndarray) -> str:
    """An 8-bit grey or RGB array as a ``data:image/png`` URI (lossless, fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def slice_view(image: np.ndarray, *, key: str, slice_index: int, n_slices: int, label: str, alt: str,
               on_slice: Callable[[], None] | None = None) -> Any:
    """Show ``image`` (the rendered plane); return the component's state (``.slice`` once scrolled).

    Args:
        image: ``uint8`` grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``.
        key: widget key (one per shown image).
        slice_index: the slice shown (0-based).
        n_slices: slices the wheel and keys scroll through (1 for a radiograph).
        label: text under the image (slice number and position).
        alt: text alternative of the image (no file names).
        on_slice: called when the user scrolled to another slice (read the new one from
            ``st.session_state[key].slice``).
    """
    data = {"src": png_data_uri(image), "slice": int(slice_index), "n": int(n_slices), "label": label, "alt": alt}
    return _mount()(key=key, data=data, on_slice_change=on_slice or (lambda: None), default={"slice": int(slice_index)})

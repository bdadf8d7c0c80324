"""The image on the page: a small Streamlit component that scrolls slices with the wheel and arrow keys.

The server renders one plane (the window applied) as a PNG, and the heatmap as a small
8-bit relevance PNG; the component shows the image, paints the heatmap over it (colour
map, opacity, floor: the same blend as ``render.overlay_heatmap``) and, over the image,
turns mouse-wheel steps and arrow keys (Up/Right: next slice,
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
    root.innerHTML = '<div class="medvl-stack"><img tabindex="0" data-testid="medvl-image"/>'
      + '<canvas class="medvl-heat" data-testid="medvl-heat" aria-hidden="true"></canvas></div>'
      + '<div class="medvl-slice-label" aria-live="polite"></div>';
    parentElement.appendChild(root);
  }
  const img = root.querySelector('img');
  const canvas = root.querySelector('canvas');
  const label = root.querySelector('.medvl-slice-label');
  if (img.getAttribute('src') !== data.src) { img.setAttribute('src', data.src); }
  img.setAttribute('alt', data.alt);
  img.dataset.slice = String(data.slice);
  img.dataset.slices = String(data.n);
  label.textContent = data.label || '';
  // The heatmap layer: relevance h (8-bit, coarse) -> colour lut[h] with alpha
  // opacity * clip((h - floor) / (1 - floor)), drawn over the image; the browser scales
  // it to the image (bilinear), as render.overlay_heatmap does on the server.
  const paint = () => {
    if (!data.heat) { canvas.style.display = 'none'; return; }
    const heat = new Image();
    heat.onload = () => {
      const w = heat.naturalWidth, h = heat.naturalHeight;
      const scratch = document.createElement('canvas');
      scratch.width = w; scratch.height = h;
      const sctx = scratch.getContext('2d');
      sctx.drawImage(heat, 0, 0);
      const values = sctx.getImageData(0, 0, w, h).data;
      canvas.width = w; canvas.height = h;
      const ctx = canvas.getContext('2d');
      const out = ctx.createImageData(w, h);
      for (let i = 0; i < w * h; i++) {
        const v = values[4 * i];
        const rgb = data.lut[v];
        const a = data.opacity * Math.min(1, Math.max(0, (v / 255 - data.floor) / (1 - data.floor)));
        out.data[4 * i] = rgb[0]; out.data[4 * i + 1] = rgb[1]; out.data[4 * i + 2] = rgb[2];
        out.data[4 * i + 3] = Math.round(255 * a);
      }
      ctx.putImageData(out, 0, 0);
      canvas.style.display = 'block';
    };
    heat.src = data.heat;
  };
  paint();
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
  const onwheel = (e) => {
    if (data.n <= 1) { return; }
    e.preventDefault();
    send(current + (e.deltaY > 0 ? 1 : -1));
  };
  img.onwheel = onwheel;
  canvas.onwheel = onwheel;
  img.onkeydown = (e) => {
    if (data.n <= 1) { return; }
    const step = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10}[e.key];
    if (step !== undefined) { e.preventDefault(); send(current + step); }
    else if (e.key === 'Home') { e.preventDefault(); send(0); }
    else if (e.key === 'End') { e.preventDefault(); send(data.n - 1); }
  };
  img.onclick = () => img.focus();
  canvas.onclick = () => img.focus();
  return () => clearTimeout(timer);
}
"""

_CSS = """
.medvl-slice-view .medvl-stack { position: relative; }
.medvl-slice-view img { width: 100%; display: block; outline: none; border-radius: 2px; }
.medvl-slice-view img:focus { box-shadow: 0 0 0 2px var(--st-primary-color); }
.medvl-slice-view canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; display: none; }
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


def slice_view(src: str, *, key: str, slice_index: int, n_slices: int, label: str, alt: str,
               heat: str | None = None, opacity: float = 0.0, on_slice: Callable[[], None] | None = None) -> Any:
    """Show an image and, over it, a heatmap layer; return the component's state (``.slice`` once scrolled).

    Args:
        src: the rendered plane as a data URI (:func:`png_data_uri`).
        key: widget key (one per shown image).
        slice_index: the slice shown (0-based).
        n_slices: slices the wheel and keys scroll through (1 for a radiograph).
        label: text under the image (slice number and position).
        alt: text alternative of the image (no file names).
        heat: the heatmap layer, relevance as an 8-bit grey PNG data URI over the same
            region as the image (:func:`medvl_viewer.render.heat_layer`), or None.
        opacity: the heatmap's opacity (0..1).
        on_slice: called when the user scrolled to another slice (read the new one from
            ``st.session_state[key].slice``).
    """
    from medvl_viewer import render

    data: dict[str, Any] = {"src": src, "slice": int(slice_index), "n": int(n_slices), "label": label, "alt": alt,
                            "heat": heat}
    if heat is not None:
        lut = np.rint(render.colormap_lut() * 255).astype(int).tolist()
        data.update(opacity=float(opacity), floor=float(render.HEAT_FLOOR), lut=lut)
    return _mount()(key=key, data=data, on_slice_change=on_slice or (lambda: None), default={"slice": int(slice_index)})

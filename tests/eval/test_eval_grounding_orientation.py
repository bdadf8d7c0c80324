"""Heatmap orientation, proven with an oracle encoder: the map peaks where the image shows the finding.

The oracle's image tokens report how bright their grid cell is, and every phrase asks for
brightness, so the ideal map of *any* phrase is the bright region of the model input. A
file is written with one bright block at a known place in its own pixel (radiograph) or
world (volume) coordinates, on the patient's left, and its mask next to it. Then:

* ``medvl.eval.grounding.evaluate_grounding`` (both map methods, ``local`` and ``cam``)
  must score a pointing game of 1 against the mask and 0 against its mirror image;
* ``medvl.load``'s pipeline (``Pipeline.heatmap``, what the viewer draws) must give a map
  over the image region whose peak, mapped back to the file's coordinates, lies in the
  block;
* the viewer's rendering (``display_plane``, ``heat_for_plane`` and ``overlay_heatmap``,
  what its image panel draws with the map) must tint the block most, and show it on the
  viewer's right, the patient's left (radiological convention).

Any flip, transpose or axis swap between the file, the model input, the mask, the
token grid, the upsampled map and the displayed plane moves the peak off the block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvl.data.manifest import write_manifest
from medvl.eval.grounding import evaluate_grounding
from medvl.inference.pipeline import Pipeline
from medvl.inference.preprocessing import Preprocessing
from medvl.models.image_base import ImageFeatures
from medvl.models.outputs import EncoderOutput

METHODS = ("local", "cam")


class OracleEncoder(nn.Module):
    """Tokens ``[mean brightness of the cell, 1]`` on a grid of ``stride``-sized cells, row-major."""

    def __init__(self, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.stride = stride
        self.out_dim = 2

    def check_input(self, x: torch.Tensor) -> None:
        assert x.ndim == 2 + len(self.stride), x.shape

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        pool = F.avg_pool2d if len(self.stride) == 2 else F.avg_pool3d
        cells = pool(x[:, :1], self.stride)  # (B, 1, *grid)
        grid = tuple(int(g) for g in cells.shape[2:])
        m = cells.flatten(2).transpose(1, 2)  # (B, N, 1), row-major over the grid
        tokens = torch.cat([m, torch.ones_like(m)], dim=-1)  # cosine with [1, 0] grows with brightness
        return ImageFeatures(pooled=tokens.mean(dim=1), tokens=tokens, grid=grid)


class OracleModel(nn.Module):
    """A dual encoder whose every phrase means "bright": identity heads, one word token ``[1, 0]``."""

    def __init__(self, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.image_encoder = OracleEncoder(stride)
        self.image_head = nn.Identity()
        self.image_local_head = nn.Identity()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def encode_image(self, x: torch.Tensor) -> EncoderOutput:
        feats = self.image_encoder(x)
        return EncoderOutput(embeds=feats.pooled, local_embeds=feats.tokens, grid=feats.grid)

    def embed_texts(self, texts: list[str]) -> EncoderOutput:
        q = torch.tensor([[1.0, 0.0]]).repeat(len(texts), 1)
        return EncoderOutput(embeds=q, local_embeds=q[:, None], local_mask=torch.ones(len(texts), 1, dtype=torch.bool))


def _study(tmp: Path, name: str, image: str, finding: str, laterality: str, mask: str) -> Path:
    path = tmp / f"{name}.jsonl"
    write_manifest(path, [{
        "study_id": name, "patient_id": "p1", "split": "test", "modality": "CR" if image.endswith(".dcm") else "CT",
        "dims": 2 if image.endswith(".dcm") else 3, "image": image,
        "report": {"findings": f"{laterality.capitalize()} {finding.replace('_', ' ')}."}, "labels": {finding: 1},
        "annotations": [{"finding": finding, "laterality": laterality, "mask": mask}],
    }])
    return path


# -- radiograph --------------------------------------------------------------------------

ROWS, COLS = 96, 128  # wider than tall: fitted into the square input with padding rows
BLOCK_2D = (slice(8, 32), slice(80, 112))  # upper image right = the patient's left apex; off the diagonal, so a transpose misses it


def _radiograph(tmp: Path, photometric: str) -> Path:
    """A CR DICOM (via the synthetic corpus's writer) with a dense block, and its mask and mirrored mask."""
    from medvl.data.synth.writers import write_png_mask, write_radiograph

    att = np.full((ROWS, COLS), 0.6, np.float32)
    att[:, :8] = att[:, -8:] = 0.0  # air at both sides, so the image is not symmetric in intensity only
    att[BLOCK_2D] = 2.5  # dense: white on a radiograph
    mask = np.zeros((ROWS, COLS), bool)
    mask[BLOCK_2D] = True
    for seed in range(50):  # the writer draws the photometric interpretation from its generator
        stored = write_radiograph(tmp / "cxr.dcm", att, np.random.default_rng(seed), patient_id="SYN-P000001",
                                  study_number=1, modality="CR", view="PA", spacing=0.5, compression="none")
        if stored.photometric == photometric:
            break
    else:
        raise AssertionError(f"no seed gave {photometric}")
    write_png_mask(tmp / "mask.png", mask)
    write_png_mask(tmp / "mirror.png", mask[:, ::-1])
    return tmp / "cxr.dcm"


DATA_2D = {"dims": 2, "image_size": 64}


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_radiograph_maps_peak_on_the_finding_in_eval_pipeline_and_viewer(tmp_path: Path, photometric: str) -> None:
    path = _radiograph(tmp_path, photometric)
    model = OracleModel((8, 8)).eval()  # 64 px input -> an 8x8 grid
    true = _study(tmp_path, "true", "cxr.dcm", "pneumothorax", "left", "mask.png")
    mirror = _study(tmp_path, "mirror", "cxr.dcm", "pneumothorax", "left", "mirror.png")
    for method in METHODS:
        hit = evaluate_grounding(model, true, "test", DATA_2D, method=method)
        miss = evaluate_grounding(model, mirror, "test", DATA_2D, method=method)
        assert hit["n_cases"] == miss["n_cases"] == 1 and not hit["errors"]
        assert hit["pointing_game"] == 1.0, method
        assert miss["pointing_game"] == 0.0, method

    pipe = Pipeline(model, Preprocessing.from_data_config(DATA_2D), model_config={"training": {"local_heads_trained": True}})
    image = pipe.read(path)
    for method in METHODS:
        heat = pipe.heatmap(path, "left pneumothorax", method=method)
        assert heat.method == method and heat.array is not None
        assert heat.array.shape == (48, 64)  # the image region of the 64x64 input (96x128 scaled by 1/2)
        r0, r1, c0, c1 = heat.source_box
        # Peak of the map in the file's pixel coordinates.
        r, c = np.unravel_index(np.argmax(heat.array), heat.array.shape)
        src = (r0 + (r + 0.5) * (r1 - r0) / heat.array.shape[0], c0 + (c + 0.5) * (c1 - c0) / heat.array.shape[1])
        assert BLOCK_2D[0].start <= src[0] < BLOCK_2D[0].stop and BLOCK_2D[1].start <= src[1] < BLOCK_2D[1].stop

        _viewer_tints_the_block(np.asarray(image.array), heat.array, BLOCK_2D)


def _viewer_tints_the_block(plane: np.ndarray, heat: np.ndarray, block: tuple[slice, slice]) -> None:
    """The viewer's overlay of ``heat`` on the displayed plane is brightest inside ``block``.

    On a black plane, ``overlay_heatmap`` draws ``w(h) * colour(h)``: the blend weight
    and the colour map's lightness (inferno) both rise with the relevance ``h``, so the
    brightest drawn pixel is the map's peak as the viewer shows it.
    """
    render = pytest.importorskip("medvl_viewer.render")
    black = np.zeros(plane.shape, np.uint8)
    shown = render.overlay_heatmap(black, heat, 1.0, rescale=False)
    assert shown.shape == (*plane.shape, 3)
    r, c = np.unravel_index(np.argmax(shown.astype(int).sum(axis=-1)), plane.shape)
    assert block[0].start <= r < block[0].stop and block[1].start <= c < block[1].stop, (r, c)
    # The patient's left is on the viewer's right.
    assert c > plane.shape[1] / 2


# -- volume ------------------------------------------------------------------------------

SHAPE_3D = (40, 32, 20)  # (x, y, z) RAS+, 0.8 x 1.0 x 2.5 mm
BLOCK_3D = (slice(0, 16), slice(16, 32), slice(10, 20))  # patient's left (low x), anterior, upper half
DATA_3D = {"dims": 3, "image_size": [16, 24, 24], "window": "none", "hu_range": [0.0, 1.0]}


def _volume(tmp: Path) -> Path:
    """A NIfTI volume stored LPS (readers must reorient it), a block on the patient's left, masks."""
    from medvl.data.synth.writers import reorient_for_storage, write_nifti

    affine = np.diag([0.8, 1.0, 2.5, 1.0])
    vol = np.full(SHAPE_3D, 0.2, np.float32)
    vol[BLOCK_3D] = 1.0
    mask = np.zeros(SHAPE_3D, np.uint8)
    mask[BLOCK_3D] = 1
    write_nifti(tmp / "ct.nii.gz", *reorient_for_storage(vol, affine, "LPS"))
    write_nifti(tmp / "mask.nii.gz", *reorient_for_storage(mask, affine, "LPS"))
    write_nifti(tmp / "mirror.nii.gz", *reorient_for_storage(np.ascontiguousarray(mask[::-1]), affine, "LPS"))
    return tmp / "ct.nii.gz"


def test_volume_maps_peak_on_the_finding_in_eval_pipeline_and_viewer(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    model = OracleModel((4, 6, 6)).eval()  # (16, 24, 24) input -> a 4x4x4 grid
    true = _study(tmp_path, "true", "ct.nii.gz", "pleural_effusion", "left", "mask.nii.gz")
    mirror = _study(tmp_path, "mirror", "ct.nii.gz", "pleural_effusion", "left", "mirror.nii.gz")
    for method in METHODS:
        assert evaluate_grounding(model, true, "test", DATA_3D, method=method)["pointing_game"] == 1.0, method
        assert evaluate_grounding(model, mirror, "test", DATA_3D, method=method)["pointing_game"] == 0.0, method

    pipe = Pipeline(model, Preprocessing.from_data_config(DATA_3D), model_config={"training": {"local_heads_trained": True}})
    image = pipe.read(path)
    ras = np.asarray(image.array)
    assert ras.shape == SHAPE_3D and ras[BLOCK_3D].min() == 1.0  # the reader undid the LPS storage
    for method in METHODS:
        heat = pipe.heatmap(path, "left pleural effusion", method=method)
        assert heat.array is not None and heat.array.ndim == 3  # (d, h, w) = (z, -y, -x) over the volume
        d, h, w = np.unravel_index(np.argmax(heat.array), heat.array.shape)
        nd, nh, nw = heat.array.shape
        # Back to RAS voxel indices: depth runs along +z, rows along -y, columns along -x.
        x = SHAPE_3D[0] * (1 - (w + 0.5) / nw)
        y = SHAPE_3D[1] * (1 - (h + 0.5) / nh)
        z = SHAPE_3D[2] * (d + 0.5) / nd
        for v, s in zip((x, y, z), BLOCK_3D, strict=True):
            assert s.start <= v < s.stop, (method, x, y, z)

        # The viewer: the axial plane through the block, and the map's matching depth.
        render = pytest.importorskip("medvl_viewer.render")
        k = (BLOCK_3D[2].start + BLOCK_3D[2].stop) // 2
        plane = render.display_plane(ras, k)  # rows -y, columns -x
        shown_block = (slice(SHAPE_3D[1] - BLOCK_3D[1].stop, SHAPE_3D[1] - BLOCK_3D[1].start),
                       slice(SHAPE_3D[0] - BLOCK_3D[0].stop, SHAPE_3D[0] - BLOCK_3D[0].start))
        assert plane[shown_block].min() == 1.0  # the displayed plane shows the block there
        _viewer_tints_the_block(plane, render.heat_for_plane(heat.array, ras, k), shown_block)
        # A slice below the block: the map's matching depth is not its peak.
        low = render.heat_for_plane(heat.array, ras, 2)
        assert low.max() < heat.array.max()

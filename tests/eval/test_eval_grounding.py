"""Grounding: heatmaps land where the phrase's evidence is; pointing game and IoU by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medvl_fakes import FakeModel

from medvl.errors import ModelError
from medvl.eval.grounding import mask_iou, phrase_for, phrase_heatmap, pointing_game, upsample


def _cell_image(cell: int, size: int = 30) -> torch.Tensor:
    """A (1, size, size) image bright in one of the 3x3 cells (cell index row-major)."""
    img = torch.zeros(1, size, size)
    r, c = divmod(cell, 3)
    s = size // 3
    img[0, r * s : (r + 1) * s, c * s : (c + 1) * s] = 1.0
    return img


def test_heatmap_peaks_on_the_phrase_and_scores_against_its_mask() -> None:
    model = FakeModel()
    nodule = 4  # finding_names()[4] == "nodule": the centre cell
    img = _cell_image(nodule) + 0.5 * _cell_image(0)  # a fainter cardiomegaly cell as a distractor
    heat = phrase_heatmap(model, img, "There is nodule.")
    assert heat.shape == (30, 30) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == 1.0
    mask = np.zeros((30, 30), bool)
    mask[10:20, 10:20] = True
    assert pointing_game(heat, mask)
    assert mask_iou(heat, mask, 0.5) > 0.4
    # The same image grounded for the distractor points elsewhere.
    other = phrase_heatmap(model, img, "Cardiomegaly.")
    assert not pointing_game(other, mask)


def test_pointing_game_and_iou_hand_worked() -> None:
    heat = np.array([[0.0, 0.2], [0.9, 0.4]], dtype=np.float32)
    assert pointing_game(heat, np.array([[0, 0], [1, 0]]))
    assert not pointing_game(heat, np.array([[1, 1], [0, 1]]))
    # minmax -> [[0, .222], [1, .444]]; >= 0.4 keeps (1,0) and (1,1); mask (1,0),(0,0): IoU 1/3
    assert mask_iou(heat, np.array([[1, 0], [1, 0]]), 0.4) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        pointing_game(heat, np.zeros((3, 3)))


def test_slice_tokens_give_a_per_slice_profile() -> None:
    prof = np.array([0.0, 1.0, 0.0, 2.0], dtype=np.float32)
    vol = upsample(prof, (8, 5, 6))
    assert vol.shape == (8, 5, 6)
    assert np.all(vol == vol[:, :1, :1])  # constant within each slice
    # linear interpolation, align_corners=False: output slice i samples input at (i + .5) / 2 - .5
    assert vol[2, 0, 0] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    with pytest.raises(ModelError):
        upsample(np.zeros((2, 2)), (4, 4, 4))


def test_encoder_without_local_tokens_is_a_model_error() -> None:
    class GlobalOnly(FakeModel):
        def encode_image(self, image):
            out = super().encode_image(image)
            out.local_embeds, out.grid = None, None
            return out

    with pytest.raises(ModelError, match="local"):
        phrase_heatmap(GlobalOnly(), _cell_image(1), "effusion")


def test_phrase_includes_laterality() -> None:
    assert phrase_for({"finding": "pleural_effusion", "laterality": "left"}) == "left pleural effusion"
    assert phrase_for({"finding": "cardiomegaly"}) == "cardiomegaly"


class WordModel(FakeModel):
    """The fake model with word tokens: each word maps to its finding's direction or to noise."""

    def embed_texts(self, texts):
        out = super().embed_texts(texts)
        words = [t.lower().strip(".").split() for t in texts]
        n = max(len(w) for w in words)
        g = torch.Generator().manual_seed(1)
        local = torch.randn(len(texts), n, self.dirs.shape[1], generator=g) * 0.1
        mask = torch.zeros(len(texts), n, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                mask[i, j] = True
                if w == "nodule":
                    local[i, j] = self.dirs[4]
        out.local_embeds, out.local_mask, out.words = local, mask, words
        return out


def test_word_tokens_are_used_when_the_text_tower_has_them() -> None:
    img = _cell_image(4) + 0.5 * _cell_image(0)
    mask = np.zeros((30, 30), bool)
    mask[10:20, 10:20] = True
    heat = phrase_heatmap(WordModel(), img, "small nodule")
    assert pointing_game(heat, mask)
    # Forcing the global embedding gives the other path (and works too on this model).
    assert pointing_game(phrase_heatmap(WordModel(), img, "There is nodule.", query="global"), mask)
    with pytest.raises(ModelError, match="word"):
        phrase_heatmap(FakeModel(), img, "nodule", query="words")


def test_native_3d_patch_grid_is_upsampled_trilinearly() -> None:
    grid = np.zeros((2, 2, 2), dtype=np.float32)
    grid[1] = 1.0  # the upper half of depth
    vol = upsample(grid, (8, 6, 6))
    assert vol.shape == (8, 6, 6)
    np.testing.assert_allclose(vol, vol[:, :1, :1] * np.ones((1, 6, 6)))  # no change along H, W
    prof = vol[:, 0, 0]
    # align_corners=False: output depth i samples (i + .5) / 4 - .5, clamped to [0, 1]
    expect = np.clip((np.arange(8) + 0.5) / 4 - 0.5, 0, 1)
    np.testing.assert_allclose(prof, expect, atol=1e-6)

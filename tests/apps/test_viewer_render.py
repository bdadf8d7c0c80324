"""Display conversions against pydicom's windowing and hand-worked numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_windowing

from medvl_viewer import render
from medvl_viewer.safe_meta import ALLOWED_KEYS, display_facts


def _pydicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """pydicom's LINEAR window with an 8-bit unsigned output range (0..255)."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 8
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    return apply_windowing(values.astype(np.float64), ds)


@pytest.mark.parametrize("center,width", [(40, 400), (-600, 1500), (300, 2), (0.5, 1), (50, 1)])
def test_window_matches_pydicom_on_real_ct(center, width):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    hu = apply_modality_lut(ds.pixel_array, ds)
    ours = render.window_to_uint8(hu, center, width)
    ref = _pydicom_window(hu, center, width)
    assert ours.dtype == np.uint8
    assert np.max(np.abs(ours.astype(np.float64) - ref)) <= 0.5 + 1e-9


def test_window_hand_worked():
    # center 100, width 201: 0 at <= -0.5, 255 above 199.5, midpoint 99.5 -> 127.5
    x = np.array([-1000.0, -0.5, 99.5, 199.5, 200.0])
    np.testing.assert_array_equal(render.window_to_uint8(x, 100, 201), [0, 0, 128, 255, 255])
    # inversion happens on [0, 1] before quantising: the midpoint 0.5 stays 127.5 -> 128
    np.testing.assert_array_equal(render.window_to_uint8(x, 100, 201, invert=True), [255, 255, 128, 0, 0])
    # a SIGMOID window from the file: 1 / (1 + exp(-4 (x - c) / w)) at x = c is one half
    assert render.window_to_uint8(np.array([100.0]), 100, 50, function="SIGMOID")[0] == 128
    with pytest.raises(ValueError, match="width must be >= 1"):
        render.window_to_uint8(x, 0, 0.5)


def test_auto_window_spans_percentiles():
    center, width = render.auto_window(np.arange(1001, dtype=np.float32), low=0, high=100)
    assert (center, width) == (500.0, 1000.0)
    assert render.auto_window(np.full((4, 4), 7.0)) == (7.0, 1.0)


def test_volume_slice_is_in_radiological_orientation():
    vol = np.zeros((4, 3, 5), dtype=np.float32)  # (x, y, z) RAS+: +x = patient right, +y = anterior
    vol[3, 2, 1] = 1.0  # most right, most anterior
    vol[0, 0, 1] = 2.0  # most left, most posterior
    plane = render.display_plane(vol, 1)
    assert plane.shape == (3, 4)  # rows along y, columns along x
    assert plane[0, 0] == 1.0  # anterior at the top, patient right on the viewer's left
    assert plane[2, 3] == 2.0
    assert render.n_slices(vol) == 5 and render.n_slices(plane) == 1
    np.testing.assert_array_equal(render.display_plane(vol, 99), render.display_plane(vol, 4))


def test_volume_slice_matches_the_model_input_layout():
    # heatmaps come on the model input's (D, H, W) grid: the shown slice must be the same plane
    from medvl.data.transforms import to_display_axes_3d

    vol = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    model_layout, _ = to_display_axes_3d(vol[None], (1.0, 1.0, 2.0))
    for z in range(4):
        np.testing.assert_array_equal(render.display_plane(vol, z), model_layout[0, z])


def test_volume_slice_of_a_real_nifti_puts_patient_right_on_the_left():
    import nibabel as nib

    # nibabel's canonical (RAS+) image: voxel (i, j, k) -> world via the affine; the
    # column shown at the left edge must be the one with the largest world x (patient right).
    img = nib.as_closest_canonical(nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    marked = np.zeros_like(vol)
    marked[-1, :, :] = 1.0  # largest i = largest world x = patient right
    marked[:, -1, :] = 2.0  # largest j = most anterior
    plane = render.display_plane(marked, 0)
    assert set(plane[:, 0]) <= {1.0, 2.0} and plane[5, 0] == 1.0
    assert set(plane[0, :]) == {2.0}


def test_overlay_keeps_grey_where_relevance_is_low():
    grey = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))  # (8, 8)
    heat = np.zeros((2, 2))
    heat[0, 0] = 1.0
    out = render.overlay_heatmap(grey, heat, opacity=0.0)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))
    # a constant map carries no preference: the image is unchanged at any opacity
    np.testing.assert_array_equal(render.overlay_heatmap(grey, np.ones((2, 2)), 1.0), out)
    full = render.overlay_heatmap(grey, heat, opacity=1.0)
    # bottom-right is the map's minimum -> untouched grey; top-left its maximum -> pure colour
    np.testing.assert_array_equal(full[-1, -1], [grey[-1, -1]] * 3)
    np.testing.assert_array_equal(full[0, 0], [128, 0, 0])  # jet(1.0) = (0.5, 0, 0)
    with pytest.raises(ValueError, match="opacity"):
        render.overlay_heatmap(grey, heat, 1.5)


def test_overlay_without_rescale_keeps_one_scale_across_slices():
    grey = np.full((4, 4), 100, np.uint8)
    weak = np.full((2, 2), 0.0)  # a slice the phrase does not concern, in a volume scaled to [0, 1]
    strong = np.full((2, 2), 1.0)
    np.testing.assert_array_equal(render.overlay_heatmap(grey, weak, 1.0, rescale=False), np.full((4, 4, 3), 100))
    np.testing.assert_array_equal(render.overlay_heatmap(grey, strong, 1.0, rescale=False)[0, 0], [128, 0, 0])
    # half relevance at full opacity: half grey, half jet(0.5) = (0.5, 1, 0.5)
    half = render.overlay_heatmap(grey, np.full((2, 2), 0.5), 1.0, rescale=False)[0, 0]
    expected = np.rint((0.5 * 100 / 255 + 0.5 * np.array([0.5, 1.0, 0.5])) * 255)
    np.testing.assert_array_equal(half, expected)


def test_thumbnail_bounds_longest_side():
    assert render.thumbnail(np.zeros((400, 200), np.uint8), 100).shape == (100, 50)
    assert render.thumbnail(np.zeros((50, 40, 3), np.uint8), 100).shape == (50, 40, 3)


def test_sentences_split_and_best_ones_highlighted_and_escaped():
    text = "Heart size normal. Small left effusion!  No pneumothorax? <script>x</script> end."
    sentences = render.split_sentences(text)
    assert sentences == ["Heart size normal.", "Small left effusion!", "No pneumothorax?", "<script>x</script> end."]
    out = render.highlight_html(sentences, [0.1, 0.9, 0.5, 0.2], n_top=2)
    assert out == (
        "Heart size normal. <mark>Small left effusion!</mark> <mark>No pneumothorax?</mark> "
        "&lt;script&gt;x&lt;/script&gt; end."
    )
    assert "<mark>" not in render.highlight_html(sentences, None)
    assert "<mark>" not in render.highlight_html(sentences, [0.3] * 4)  # no preference, no highlight
    assert render.highlight_html(["A.", "B."], [0.2, 0.7]) == "A. <mark>B.</mark>"
    assert render.highlight_html(["A.", "B.", "C."], [0.5, 0.5, 0.1]) == "<mark>A.</mark> <mark>B.</mark> C."
    with pytest.raises(ValueError):
        render.highlight_html(sentences, [1.0])


def test_report_sections_keep_their_line_breaks():
    text = "FINDINGS: Small left effusion. Heart normal.\n\nIMPRESSION: Effusion."
    sentences, line_ends = render.split_report(text)
    assert sentences == ["FINDINGS: Small left effusion.", "Heart normal.", "IMPRESSION: Effusion."]
    assert line_ends == {1}
    out = render.highlight_html(sentences, [0.9, 0.1, 0.5], n_top=1, line_ends=line_ends)
    assert out == "<mark>FINDINGS: Small left effusion.</mark> Heart normal.<br>IMPRESSION: Effusion."


def test_display_facts_never_include_identifiers():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    assert str(ds.PatientName)  # the real file does carry a name

    img = SimpleNamespace(
        array=np.zeros((128, 128), np.float32),
        modality="CT",
        spacing=(0.661468, 0.661468),
        windows=[(40.0, 400.0)],
        tags={"PatientName": str(ds.PatientName), "PatientID": ds.PatientID, "StudyDate": ds.StudyDate},
    )
    facts = display_facts(img)
    assert set(facts) <= set(ALLOWED_KEYS)
    assert facts == {
        "Modality": "CT",
        "Size": "128 x 128",
        "Spacing (mm)": "0.6615 x 0.6615",
        "Windows in file": "C 40 / W 400",
    }
    text = " ".join(facts.values())
    for value in img.tags.values():
        assert value not in text


def test_markdown_escape_shows_ids_literally():
    assert render.markdown_escape("SYN-CXR000001") == "SYN\\-CXR000001"
    assert render.markdown_escape("a_b*c<d>") == "a\\_b\\*c\\<d\\>"
    assert render.markdown_escape("plain") == "plain"

"""Display conversions against pydicom's windowing and hand-worked numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib
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
    # bottom-right is the map's minimum -> untouched grey; top-left its maximum -> the colour map's top
    np.testing.assert_array_equal(full[-1, -1], [grey[-1, -1]] * 3)
    top = np.rint(np.asarray(matplotlib.colormaps["inferno"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(full[0, 0], top)
    with pytest.raises(ValueError, match="opacity"):
        render.overlay_heatmap(grey, heat, 1.5)


def test_overlay_colours_are_matplotlib_s_perceptual_map_with_a_floor():
    grey = np.full((4, 4), 100, np.uint8)
    # below the floor no colour is drawn at all; one scale across a volume's slices
    for value in (0.0, render.HEAT_FLOOR):
        np.testing.assert_array_equal(render.overlay_heatmap(grey, np.full((2, 2), value), 1.0, rescale=False),
                                      np.full((4, 4, 3), 100))
    # 0.6 at full opacity: weight (0.6 - 0.2) / 0.8 = 0.5 -> half grey, half inferno(0.6)
    half = render.overlay_heatmap(grey, np.full((2, 2), 0.6), 1.0, rescale=False)[0, 0]
    colour = np.asarray(matplotlib.colormaps["inferno"](np.rint(0.6 * 255) / 255)[:3])
    np.testing.assert_array_equal(half, np.rint((0.5 * 100 / 255 + 0.5 * colour) * 255))
    # the default opacity leaves the anatomy under the hottest spot readable: >= 60 % grey
    assert render.DEFAULT_OPACITY <= 0.4
    lightness = np.asarray(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]).mean(axis=1)
    assert np.all(np.diff(lightness[32:]) > -0.01)  # perceptual: brighter as relevance rises


def test_colour_bar_spans_the_colour_map_and_names_its_ends():
    bar = render.colour_bar_html("low relevance", "high relevance")
    assert "low relevance" in bar and "high relevance" in bar and 'data-testid="heat-colour-bar"' in bar
    top = np.rint(np.asarray(matplotlib.colormaps["inferno"](1.0)[:3]) * 255).astype(int)
    assert f"rgb({top[0]},{top[1]},{top[2]}) 100%" in bar


@pytest.mark.parametrize("shape", [(200, 100), (120, 300)])
def test_a_radiograph_map_peaking_at_a_known_place_is_drawn_there(shape):
    # A map over the image region (stored orientation, as the backend returns it) that
    # peaks in the cell at row 1, column 3 of a 5x4 grid (the image's right side, upper
    # half: the patient's left on a PA film) must tint that part of the shown image only.
    rows, cols = shape
    heat = np.zeros((5, 4), np.float32)
    heat[1, 3] = 1.0
    grey = np.full(shape, 90, np.uint8)
    out = render.overlay_heatmap(grey, heat, 1.0, rescale=False)
    tinted = np.abs(out.astype(int) - 90).sum(axis=-1) > 20
    r, c = np.nonzero(tinted)
    assert tinted.any()
    # the cell spans rows [rows/5, 2 rows/5) and columns [3 cols/4, cols): the bilinear
    # spread stays within half a cell of it
    assert r.min() >= rows / 5 - rows / 10 and r.max() < 2 * rows / 5 + rows / 10
    assert c.min() >= 3 * cols / 4 - cols / 8
    cy, cx = np.average(np.argwhere(tinted), axis=0)
    assert abs(cy - 1.5 * rows / 5) < rows / 20 and abs(cx - 3.5 * cols / 4) < cols / 16


def test_a_volume_map_peaking_at_a_known_place_is_drawn_there():
    # A finding in the patient's LEFT, ANTERIOR, upper volume. The map reaches the viewer
    # the way the model sees the volume: the library's model layout (z, -y, -x). Drawn
    # over the shown slice, it must sit where display_plane shows that voxel: anterior
    # at the top, the patient's left on the viewer's right.
    from medvl.data.transforms import to_display_axes_3d

    nx, ny, nz = 40, 30, 12
    mask = np.zeros((nx, ny, nz), np.float32)  # (x, y, z) RAS+: x+ = patient right, y+ = anterior
    mask[2:8, 22:28, 8] = 1.0  # small x = patient left; large y = anterior; slice 8
    heat, _ = to_display_axes_3d(mask[None], (1.0, 1.0, 1.0))
    heat = heat[0]  # (z, -y, -x)
    vol = np.full((nx, ny, nz), 50.0, np.float32)
    for z in range(nz):
        plane = render.display_plane(vol, z)
        grey = render.window_to_uint8(plane, 50, 100)
        out = render.overlay_heatmap(grey, render.heat_for_plane(heat, vol, z), 1.0, rescale=False)
        tinted = np.abs(out.astype(int) - grey[..., None].astype(int)).sum(axis=-1) > 20
        if z != 8:
            assert not tinted.any()
            continue
        r, c = np.nonzero(tinted)
        assert r.max() < ny / 2  # anterior: top half
        assert c.min() > nx / 2  # patient's left: the viewer's right half
        # and exactly where display_plane puts the marked voxels
        shown = render.display_plane(mask, 8) > 0
        assert np.array_equal(tinted, shown) or (tinted & shown).sum() >= 0.8 * shown.sum()


def test_slice_position_is_the_patient_z_of_the_slice_centre():
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"))
    vol = SimpleNamespace(array=np.zeros(img.shape[:3], np.float32), affine=img.affine)
    nx, ny, _ = img.shape[:3]
    for k in (0, 3):
        expected = nib.affines.apply_affine(img.affine, [(nx - 1) / 2, (ny - 1) / 2, k])[2]
        assert render.slice_position_mm(vol, k) == pytest.approx(expected)
    assert render.slice_position_mm(SimpleNamespace(array=np.zeros((4, 4)), affine=None), 0) is None


def test_planes_are_shrunk_to_the_display_before_the_window():
    plane = np.arange(4000 * 2000, dtype=np.float32).reshape(4000, 2000)
    small = render.fit_plane(plane, 1000)
    assert small.shape == (1000, 500)
    # area averaging: each output pixel is the mean of its 4x4 block
    assert small[0, 0] == pytest.approx(plane[:4, :4].mean(), rel=1e-5)
    assert render.fit_plane(plane[:10, :10], 1000).shape == (10, 10)  # smaller planes pass through


def test_thumbnail_bounds_longest_side():
    assert render.thumbnail(np.zeros((400, 200), np.uint8), 100).shape == (100, 50)
    assert render.thumbnail(np.zeros((50, 40, 3), np.uint8), 100).shape == (50, 40, 3)


REPORT = ("FINDINGS: Left PTX with a visible pleural line. There is no pneumothorax on the right. "
          "Small left pleural effusion. Heart normal <b>x</b>.\nIMPRESSION: Left pneumothorax.\n"
          "COMPARISON: None.\nINDICATION: Rule out left pneumothorax.")


def test_highlights_follow_the_query_s_statements_not_negations_or_indications():
    from medvl.data.assertions import find_assertions, report_statements

    sentences = report_statements(REPORT)
    marks = render.highlight_marks(find_assertions("left apical pneumothorax"), sentences)
    assert sorted(sentences[i].text for i in marks) == ["Left PTX with a visible pleural line.", "Left pneumothorax."]
    assert render.highlight_marks(find_assertions("right pneumothorax"), sentences) == set()
    # a query that names no finding: the best-scoring sentences that state something present
    scores = [0.1, 0.9, 0.5, 0.2, 0.3, 0.8, 0.95]  # the negation and the indication score high
    marks = render.highlight_marks([], sentences, scores, n_top=2)
    assert sorted(sentences[i].text for i in marks) == ["Left pneumothorax.", "Small left pleural effusion."]
    assert render.highlight_marks([], sentences, [0.3] * len(sentences)) == set()  # no preference
    with pytest.raises(ValueError):
        render.highlight_marks([], sentences, [1.0])


def test_reports_read_in_order_with_marks_and_escaped():
    from medvl.data.assertions import report_statements

    sentences = report_statements(REPORT)
    html = render.report_html(sentences, {0})
    order = [html.index(f"<b>{s}:</b>") for s in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")]
    assert order == sorted(order)
    assert "<mark>Left PTX with a visible pleural line.</mark>" in html
    assert "Heart normal &lt;b&gt;x&lt;/b&gt;." in html
    assert render.report_html([]) == "<p>(no report)</p>"


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


def test_a_centre_crop_map_is_placed_on_the_whole_radiograph():
    # A model that centre-crops (CLIP's "crop" fit) sees rows 100..300 of a 400 x 200
    # image: its map covers that band only, and the viewer draws it there.
    from medvl_viewer.library import _place

    heat = np.ones((8, 8), np.float32)
    full = _place(heat, (100, 300, 0, 200), (400, 200))
    assert full.shape == (16, 8)  # the map's own resolution, over the whole image
    rows = np.nonzero(full.max(axis=1) > 0.5)[0]
    assert (rows.min(), rows.max()) == (4, 11)  # rows 100..300 of 400 -> cells 4..11 of 16
    assert _place(heat, (0, 400, 0, 200), (400, 200)) is heat  # a padded fit covers it all

"""Model-input transforms against hand-worked numbers and pydicom's own VOI LUT."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from medvl.config import from_dict
from medvl.data.config import DataConfig
from medvl.data.transforms import (
    ModelInputTransform,
    build_augmentation,
    preprocess_signature,
)
from medvl.errors import ImageReadError
from medvl.io.image import MedicalImage
from medvl.io.intensity import get_preset


def _cfg(**kw) -> DataConfig:
    return from_dict(DataConfig, kw, where="data")


def _image2d(array, *, windows=(), photometric="MONOCHROME2") -> MedicalImage:
    return MedicalImage(np.asarray(array, np.float32), (1.0, 1.0), None, "CT", photometric,
                        windows=list(windows))


def _pydicom_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """pydicom's LINEAR VOI windowing of ``array``, scaled from 16-bit output to [0, 1]."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    out = apply_voi_lut(array.astype(np.float64), ds)
    return out / (2**16 - 1)


def test_file_window_and_presets_match_pydicom() -> None:
    hu = np.linspace(-1200, 1500, 12 * 10, dtype=np.float32).reshape(12, 10)
    image = _image2d(hu, windows=[(40.0, 400.0)])
    got = ModelInputTransform(_cfg(dims=2, image_size=[12, 10]))(image)
    np.testing.assert_allclose(got[0], _pydicom_window(hu, 40.0, 400.0), atol=1e-5)
    got = ModelInputTransform(_cfg(dims=2, image_size=[12, 10], window="lung"))(image)
    c, w = get_preset("lung")
    np.testing.assert_allclose(got[0], _pydicom_window(hu, c, w), atol=1e-5)


def test_window_list_stacks_channels_and_single_window_repeats() -> None:
    hu = np.linspace(-1000, 1000, 64, dtype=np.float32).reshape(8, 8)
    image = _image2d(hu)
    got = ModelInputTransform(_cfg(dims=2, image_size=8, window=["lung", "bone"], in_channels=2))(image)
    assert got.shape == (2, 8, 8)
    for k, name in enumerate(["lung", "bone"]):
        np.testing.assert_allclose(got[k], _pydicom_window(hu, *get_preset(name)), atol=1e-5)
    rgb = ModelInputTransform(_cfg(dims=2, image_size=8, window="lung", in_channels=3))(image)
    assert rgb.shape == (3, 8, 8)
    np.testing.assert_array_equal(rgb[0], rgb[2])


def test_raw_hu_range_normalisation() -> None:
    image = _image2d(np.array([[-2000.0, -1000.0], [200.0, 3000.0]]))
    got = ModelInputTransform(_cfg(dims=2, image_size=2, window="none", hu_range=[-1000, 1000]))(image)
    np.testing.assert_allclose(got[0], [[0.0, 0.0], [0.6, 1.0]], atol=1e-6)


def test_2d_keeps_aspect_ratio_with_zero_padding() -> None:
    # 20 rows x 40 cols of 200 HU -> 0.6 under hu_range [-1000, 1000]; fitted to 8 x 16
    # inside 16 x 16, so 4 rows of padding above and below.
    image = _image2d(np.full((20, 40), 200.0))
    got = ModelInputTransform(_cfg(dims=2, image_size=16, window="none"))(image)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 4:12], 0.6, atol=1e-6)
    assert np.all(got[0, :4] == 0) and np.all(got[0, 12:] == 0)
    # a tall image pads left and right instead
    tall = ModelInputTransform(_cfg(dims=2, image_size=16, window="none"))(_image2d(np.full((40, 20), 200.0)))
    np.testing.assert_allclose(tall[0, :, 4:12], 0.6, atol=1e-6)
    assert np.all(tall[0, :, :4] == 0)


def test_downsampling_averages_areas() -> None:
    # 2x2 blocks of distinct values; shrinking by 2 must give each block's mean (no aliasing).
    blocks = np.arange(16, dtype=np.float32).reshape(4, 4) * 100 - 800
    fine = np.kron(blocks, np.ones((2, 2), np.float32))
    fine += np.tile(np.array([[0, 10], [20, 30]], np.float32), (4, 4))  # mean 15 per block
    got = ModelInputTransform(_cfg(dims=2, image_size=4, window="none", hu_range=[-1000, 1000]))(
        _image2d(fine))
    np.testing.assert_allclose(got[0], (blocks + 15 + 1000) / 2000, atol=1e-5)


def test_monochrome1_is_inverted_after_windowing() -> None:
    hu = np.array([[0.0, 1000.0]], np.float32)
    got = ModelInputTransform(_cfg(dims=2, image_size=[1, 2]))(
        _image2d(hu, windows=[(500.5, 1001.0)], photometric="MONOCHROME1"))
    np.testing.assert_allclose(got[0], [[1.0, 0.0]], atol=1e-6)


def test_3d_orientation_is_axial_radiological() -> None:
    # RAS+ (x, y, z) grid of (4, 5, 6): x grows toward the patient's right, so x=3 is
    # the patient's rightmost column; y=4 is the most anterior row; z=0 most inferior.
    vol = np.zeros((4, 5, 6), np.float32)
    vol[3, 4, 0] = 1000.0
    image = MedicalImage(vol, (1.0, 1.0, 1.0), np.eye(4), "CT", "MONOCHROME2")
    got = ModelInputTransform(_cfg(dims=3, image_size=[6, 5, 4], window="none"))(image)
    assert got.shape == (1, 6, 5, 4)
    d, h, w = np.unravel_index(int(np.argmax(got[0])), got.shape[1:])
    # D = z (inferior first), H = -y (anterior at the top), W = -x (patient's right on the
    # image's left, as radiologists read axial CT)
    assert (d, h, w) == (0, 0, 0)


def test_3d_spacing_resample_then_pad() -> None:
    # 4^3 voxels of 2 mm -> 8^3 at 1 mm, then padded to 10^3 (1 voxel each side).
    vol = np.full((4, 4, 4), 200.0, np.float32)
    image = MedicalImage(vol, (2.0, 2.0, 2.0), np.diag([2.0, 2.0, 2.0, 1.0]), "CT", "MONOCHROME2")
    got = ModelInputTransform(_cfg(dims=3, image_size=10, window="none", spacing=[1, 1, 1]))(image)
    assert got.shape == (1, 10, 10, 10)
    np.testing.assert_allclose(got[0, 1:9, 1:9, 1:9], 0.6, atol=1e-5)
    assert got[0, 0].max() == 0 and got[0, :, :, 9].max() == 0


def test_wrong_dimensionality_raises_image_read_error() -> None:
    with pytest.raises(ImageReadError, match="dims"):
        ModelInputTransform(_cfg(dims=3, image_size=4))(_image2d(np.zeros((4, 4))))


def test_augmentation_is_seeded_and_stays_in_unit_range() -> None:
    cfg = _cfg(dims=2, image_size=16, augment=True)
    x = np.random.default_rng(0).random((1, 16, 16), dtype=np.float32)
    a1, a2 = build_augmentation(cfg, seed=3), build_augmentation(cfg, seed=3)
    y1, y2 = a1(x), a2(x)
    np.testing.assert_array_equal(y1, y2)
    assert y1.shape == x.shape and y1.min() >= 0 and y1.max() <= 1
    assert not np.array_equal(build_augmentation(cfg, seed=4)(x), y1)


def test_signature_changes_with_preprocessing_fields_only() -> None:
    base = preprocess_signature(_cfg(dims=2, image_size=16))
    assert preprocess_signature(_cfg(dims=2, image_size=16, batch_size=3, augment=True)) == base
    assert preprocess_signature(_cfg(dims=2, image_size=32)) != base
    assert preprocess_signature(_cfg(dims=2, image_size=16, window="lung")) != base


def test_pydicom_reference_is_sane() -> None:
    # Guard the reference helper itself: the centre of a window maps to ~0.5.
    assert abs(float(_pydicom_window(np.array([40.0]), 40.0, 400.0)[0]) - 0.5) < 0.01
    assert pydicom.__version__


def test_grid_maps_a_mask_like_the_image() -> None:
    # A mask of the left half of a 20 x 40 image lands on the left half of the padded
    # 8 x 16 content band inside 16 x 16, exactly where the image pixels went.
    mask = np.zeros((1, 20, 40), np.float32)
    mask[:, :, :20] = 1
    t = ModelInputTransform(_cfg(dims=2, image_size=16, window="none"))
    got = t.grid(mask) >= 0.5
    expected = np.zeros((1, 16, 16), bool)
    expected[:, 4:12, :8] = True
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="channel-first"):
        t.grid(mask[0])


def test_dictionary_wrapper_composes_with_monai(tmp_path) -> None:
    from monai.transforms import Compose, RandFlipd

    from medvl.data.transforms import ModelInputTransformd

    cfg = _cfg(dims=2, image_size=8, window="none")
    hu = np.linspace(-1000, 1000, 64, dtype=np.float32).reshape(8, 8)
    pipeline = Compose([ModelInputTransformd("image", cfg), RandFlipd("image", prob=1.0, spatial_axis=1)])
    out = pipeline({"image": _image2d(hu), "study_id": "s1"})
    assert out["study_id"] == "s1"
    expected = ModelInputTransform(cfg)(_image2d(hu))[:, :, ::-1]
    np.testing.assert_allclose(np.asarray(out["image"]), expected, atol=1e-6)
    with pytest.raises(KeyError, match="image"):
        ModelInputTransformd("image", cfg)({"other": 1})


# -- fit, resample, mean/std (the CLIP family's preprocessing) ---------------------------

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def test_fit_crop_keeps_the_centre_and_pad_keeps_everything() -> None:
    wide = np.tile(np.arange(16, dtype=np.float32), (8, 1))  # (8, 16): column index as value
    image = _image2d(wide)
    crop = ModelInputTransform(_cfg(dims=2, image_size=8, window="none", hu_range=[0, 15], fit="crop"))(image)
    np.testing.assert_allclose(crop[0], wide[:, 4:12] / 15.0, atol=1e-6)  # centre columns, no resize
    pad = ModelInputTransform(_cfg(dims=2, image_size=8, window="none", hu_range=[0, 15]))(image)
    assert pad[0, :2].max() == 0.0 and pad[0, 6:].max() == 0.0  # (4, 8) image padded top and bottom
    assert pad[0, 2:6].min() >= 0.0 and pad[0, 2:6, -1].max() > 0.9  # every column kept


def test_crop_bicubic_mean_std_equal_transformers_clip_processor() -> None:
    """An 8-bit grey image through CLIP's own processor (PIL path) and through medvl."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(150, 210)).astype(np.uint8)
    grey[40:110, 60:160] = 230  # structure that survives the resize
    ref = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})(
        images=Image.fromarray(grey).convert("RGB"), return_tensors="np")["pixel_values"][0]
    cfg = _cfg(dims=2, image_size=64, window="none", hu_range=[0, 255], in_channels=3, fit="crop",
               resample="bicubic", mean=CLIP_MEAN, std=CLIP_STD)
    got = ModelInputTransform(cfg)(_image2d(grey.astype(np.float32)))
    assert got.shape == ref.shape == (3, 64, 64)
    # PIL resizes 8-bit values (rounding to integers); medvl resizes floats: <= 1/255 apart before /std
    np.testing.assert_allclose(got, ref, atol=1.01 / 255 / min(CLIP_STD))


def test_fit_stretch_equals_transformers_siglip_processor() -> None:
    """SigLIP/MedSigLIP resize to the square grid without keeping the aspect ratio."""
    from PIL import Image
    from transformers import SiglipImageProcessorPil

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(150, 210)).astype(np.uint8)
    grey[40:110, 60:160] = 230
    ref = SiglipImageProcessorPil(size={"height": 64, "width": 64}, resample=3)(
        images=Image.fromarray(grey).convert("RGB"), return_tensors="np")["pixel_values"][0]
    cfg = _cfg(dims=2, image_size=64, window="none", hu_range=[0, 255], in_channels=3, fit="stretch",
               resample="bicubic", mean=[0.5] * 3, std=[0.5] * 3)
    got = ModelInputTransform(cfg)(_image2d(grey.astype(np.float32)))
    assert got.shape == ref.shape == (3, 64, 64)
    np.testing.assert_allclose(got, ref, atol=1.01 / 255 / 0.5)


def test_bicubic_resize_is_pils_antialiased_bicubic() -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    a = rng.random((90, 90)).astype(np.float32)
    got = ModelInputTransform(_cfg(dims=2, image_size=32, window="none", hu_range=[0, 1], resample="bicubic"))(
        _image2d(a))[0]
    ref = np.asarray(Image.fromarray(a, mode="F").resize((32, 32), Image.BICUBIC))
    # hu_range [0, 1] maps 0..1 to 0..1 (DICOM linear window); PIL may overshoot, medvl clips to [0, 1]
    np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=2e-5)


@pytest.mark.parametrize("bad, field", [
    ({"mean": [0.5]}, "data.std"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "data.mean"),
    ({"mean": [0.5], "std": [0.0]}, "data.std"),
    ({"dims": 3, "image_size": 8, "fit": "crop"}, "data.fit"),
    ({"dims": 3, "image_size": 8, "fit": "stretch"}, "data.fit"),
    ({"fit": "squash"}, "data.fit"),
    ({"resample": "nearest"}, "data.resample"),
])
def test_bad_normalisation_and_fit_settings_name_the_field(bad, field) -> None:
    from medvl.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _cfg(**{"dims": 2, "image_size": 8, **bad})
    assert err.value.field == field


def test_cache_signature_changes_with_fit_and_resample_not_with_mean() -> None:
    base = preprocess_signature(_cfg(dims=2, image_size=8))
    assert preprocess_signature(_cfg(dims=2, image_size=8, fit="crop")) != base
    assert preprocess_signature(_cfg(dims=2, image_size=8, resample="bicubic")) != base
    assert preprocess_signature(_cfg(dims=2, image_size=8, mean=[0.5], std=[0.5])) == base  # applied after it
